"""The serving side: settings, gRPC servicers, batching, runtime sessions, metrics, CLI."""
