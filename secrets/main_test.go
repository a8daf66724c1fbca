package secrets

import (
	"os"
	"testing"

	"github.com/twofactor/twofactor/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }
