"""The peer servers `make bench-peers` compares slimserve with, each run in its own venv.

`mlserver_onnx.py` runs inside MLServer 1.7.1's venv and `kserve_onnx.py` inside KServe
0.21's; `echo_server.py` is a bare grpc.aio server that answers ModelInfer with stored
bytes, the floor a Python gRPC server cannot go below. None of them is imported by slimserve.
"""
