package messaging

import (
	"strconv"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
)

// outboxSchema is watermill-sql's PostgreSQL schema with a select that reads a
// batch in time proportional to the batch, not to the backlog.
//
// The stock query finds the messages after the group's offset with
//
//	(transaction_id = last AND "offset" > acked) OR transaction_id > last
//
// which PostgreSQL answers with a bitmap scan of every remaining row and a sort:
// catching up with a backlog of N rows costs O(N) per batch (60 ms per batch of
// 100 with 58,000 rows behind, measured; see BENCHMARKS.md). The same condition
// written as a row comparison, (transaction_id, "offset") > (last, acked), is an
// index range on the primary key, read in order and stopped by the LIMIT.
type outboxSchema struct {
	wsql.DefaultPostgreSQLSchema
}

func (s outboxSchema) SelectQuery(params wsql.SelectQueryParams) (wsql.Query, error) {
	next, err := params.OffsetsAdapter.NextOffsetQuery(wsql.NextOffsetQueryParams{Topic: params.Topic, ConsumerGroup: params.ConsumerGroup})
	if err != nil {
		return wsql.Query{}, err
	}
	batch := s.SubscribeBatchSize
	if batch <= 0 {
		batch = 100
	}
	// The CTE locks the group's offset row (FOR UPDATE), as in the stock query:
	// one subscriber of a group reads at a time.
	return wsql.Query{Query: `WITH last_processed AS (` + next.Query + `)
		SELECT "offset", transaction_id, uuid, payload, metadata FROM ` + s.MessagesTable(params.Topic) + `
		WHERE (transaction_id, "offset") > (
				(SELECT last_processed_transaction_id FROM last_processed),
				(SELECT offset_acked FROM last_processed))
			AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
		ORDER BY transaction_id, "offset"
		LIMIT ` + strconv.Itoa(batch), Args: next.Args}, nil
}
