package load

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// clockTicks is USER_HZ, 100 on every Linux platform Go supports.
const clockTicks = 100

// processCPU is the user+system CPU time of a process (/proc/PID/stat).
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return statCPU(b)
}

func statCPU(b []byte) (time.Duration, error) {
	// The command name is in parentheses and may hold spaces: fields follow the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc stat")
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// commandCPU reads the CPU time of every process whose name is comm (for
// "postgres": the postmaster, its backends and background workers), by pid.
func commandCPU(comm string) map[int]time.Duration {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	out := map[int]time.Duration{}
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		open, close := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || close < open || string(b[open+1:close]) != comm {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if t, err := statCPU(b); err == nil {
			out[pid] = t
		}
	}
	return out
}

// cpuSince is the CPU the processes alive at end used since start (all of it
// for those started since). Processes that exited in between took their time
// with them, so this is a lower bound when connections come and go (the
// service's pool keeps its connections; pgbench's usage is read before it ends).
func cpuSince(start, end map[int]time.Duration) time.Duration {
	var total time.Duration
	for pid, t := range end {
		total += t - start[pid]
	}
	return total
}

// machineCPU returns busy and total CPU time of the machine (/proc/stat).
func machineCPU() (busy, total time.Duration) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 8 || fields[0] != "cpu" {
		return 0, 0
	}
	var sum, idle int64
	for i, s := range fields[1:] {
		v, _ := strconv.ParseInt(s, 10, 64)
		if i >= 7 { // guest time is already counted in user
			break
		}
		sum += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return time.Duration(sum-idle) * time.Second / clockTicks, time.Duration(sum) * time.Second / clockTicks
}

// memory reads VmHWM (peak resident set) and VmRSS of a process, in bytes.
func memory(pid int) (hwm, rss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmHWM":
			hwm = n << 10
		case "VmRSS":
			rss = n << 10
		}
	}
	return hwm, rss, nil
}

// resetPeak starts a new peak-RSS window (writing 5 to clear_refs resets VmHWM
// to the current RSS; Linux ≥ 4.0, same user or root). False when not allowed:
// VmHWM is then the peak since the process started.
func resetPeak(pid int) bool {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil
}

// Usage is the CPU spent during a phase, by whom, and the server's memory.
type Usage struct {
	Wall     time.Duration `json:"wall_ns"`
	Server   time.Duration `json:"server_cpu_ns"`
	Postgres time.Duration `json:"postgres_cpu_ns"`
	Tool     time.Duration `json:"tool_cpu_ns"`
	Machine  time.Duration `json:"machine_busy_ns"`
	Capacity time.Duration `json:"machine_capacity_ns"`
	// PeakRSS is the server's VmHWM at the end of the phase: the peak during the
	// phase when PeakReset, otherwise since the server started.
	PeakRSS   int64 `json:"server_peak_rss_bytes"`
	RSS       int64 `json:"server_rss_bytes"`
	PeakReset bool  `json:"peak_reset"`
	// DB is the work of the measured database (pg_stat_database), when known,
	// counted between two readings DBWall apart (the second one waits for the
	// backends to report, so DBWall is longer than Wall).
	DB     *DBWork       `json:"db,omitempty"`
	DBWall time.Duration `json:"db_wall_ns,omitempty"`
}

// DBWork is what PostgreSQL counted for one database during a phase
// (pg_stat_database; backends flush their counts within a second).
type DBWork struct {
	Transactions int64 `json:"transactions"`
	RowsReturned int64 `json:"rows_returned"`
	RowsFetched  int64 `json:"rows_fetched"`
	RowsInserted int64 `json:"rows_inserted"`
	RowsUpdated  int64 `json:"rows_updated"`
	RowsDeleted  int64 `json:"rows_deleted"`
}

func dbWork(ctx context.Context, db *pgxpool.Pool) (DBWork, bool) {
	var w DBWork
	if db == nil {
		return w, false
	}
	err := db.QueryRow(ctx, `SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted
		FROM pg_stat_database WHERE datname = current_database()`).
		Scan(&w.Transactions, &w.RowsReturned, &w.RowsFetched, &w.RowsInserted, &w.RowsUpdated, &w.RowsDeleted)
	return w, err == nil
}

type usageProbe struct {
	db                     *pgxpool.Pool
	dbStart                DBWork
	dbOK                   bool
	pid                    int
	start                  time.Time
	server, tool, busy, ca time.Duration
	pg                     map[int]time.Duration
	reset                  bool
	statsDelay             time.Duration
}

// startUsage samples the counters at the start of a phase (pid 0: no server
// process known; db nil: no database counters).
func startUsage(pid int, db *pgxpool.Pool) *usageProbe {
	p := &usageProbe{pid: pid, db: db, start: time.Now()}
	p.dbStart, p.dbOK = dbWork(context.Background(), db)
	if pid > 0 {
		p.reset = resetPeak(pid)
		p.server, _ = processCPU(pid)
	}
	p.pg = commandCPU("postgres")
	p.tool, _ = processCPU(os.Getpid())
	p.busy, p.ca = machineCPU()
	return p
}

func (p *usageProbe) stop() Usage {
	u := Usage{Wall: time.Since(p.start), PeakReset: p.reset}
	if p.pid > 0 {
		s, _ := processCPU(p.pid)
		u.Server = s - p.server
		u.PeakRSS, u.RSS, _ = memory(p.pid)
	}
	u.Postgres = cpuSince(p.pg, commandCPU("postgres"))
	t, _ := processCPU(os.Getpid())
	u.Tool = t - p.tool
	b, c := machineCPU()
	u.Machine, u.Capacity = b-p.busy, c-p.ca
	if p.pid == os.Getpid() {
		// An in-process server (the tests): the tool's time is the server's.
		u.Tool = 0
	}
	if p.dbOK {
		// Backends report their counts when idle, at most once a second, and
		// those held back then within 10 s (Config.DBStatsDelay); pgbench's
		// report theirs as they exit.
		time.Sleep(p.statsDelay)
		if end, ok := dbWork(context.Background(), p.db); ok {
			u.DBWall = time.Since(p.start)
			u.DB = &DBWork{
				Transactions: end.Transactions - p.dbStart.Transactions, RowsReturned: end.RowsReturned - p.dbStart.RowsReturned,
				RowsFetched: end.RowsFetched - p.dbStart.RowsFetched, RowsInserted: end.RowsInserted - p.dbStart.RowsInserted,
				RowsUpdated: end.RowsUpdated - p.dbStart.RowsUpdated, RowsDeleted: end.RowsDeleted - p.dbStart.RowsDeleted,
			}
		}
	}
	return u
}
