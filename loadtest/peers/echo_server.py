"""A bare grpc.aio server that answers every ModelInfer with the same stored response bytes.

No decoding, no model, no encoding: what one request costs a Python gRPC server and nothing
more. `make bench-peers` subtracts nothing from it; it is the floor slimserve's own cost per
request is compared with.

    python echo_server.py PORT RESPONSE_FILE
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

METHOD = "ModelInfer"
SERVICE = "inference.GRPCInferenceService"


async def serve(port: int, response: bytes) -> None:
    async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(answer)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2]).read_bytes()))
