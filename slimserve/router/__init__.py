"""Per-request variant routing: request hints, latency model, load, CPU price, policies, explain.

Nothing here imports gRPC or generated protobuf code: `server/` converts requests into
`RequestHints` and queue state into `QueueView`s, and turns `Decision`s into responses.
"""
