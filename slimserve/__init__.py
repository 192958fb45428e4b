"""slimserve: a compression-aware gRPC model server (`slimserve.server`), its router
(`slimserve.router`), the compression pipeline (`slimserve.variants`), the protocol stubs
(`slimserve.protos`) and the benchmarks and load tests (`loadtest`)."""
