"""KServe 0.21 ModelServer for ONNX graphs on ONNX Runtime, one thread (runs in KServe's venv).

    python kserve_onnx.py --grpc-port P --http-port Q digits=/path/model.onnx minilm=/path/model.onnx

KServe's Python ModelServer has no batching: every call is one session run.
"""

from __future__ import annotations

import argparse

import kserve
import onnxruntime as ort
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

_DATATYPE = {"tensor(float)": "FP32", "tensor(int64)": "INT64"}


class OnnxModel(kserve.Model):  # type: ignore[misc]
    """One ONNX Runtime session, answering with raw (binary) outputs as slimserve does."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.outputs = [(o.name, _DATATYPE[o.type]) for o in self.session.get_outputs()]
        self.ready = True
        return True

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None, response_headers: dict | None = None
    ) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run([name for name, _ in self.outputs], feeds)
        outputs = []
        for (name, datatype), value in zip(self.outputs, results, strict=True):
            output = InferOutput(name=name, shape=list(value.shape), datatype=datatype)
            output.set_data_from_numpy(value, binary_data=True)
            outputs.append(output)
        return InferResponse(
            response_id=payload.id, model_name=self.name, infer_outputs=outputs, use_binary_outputs=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("models", nargs="+", help="name=path of an ONNX graph")
    args = parser.parse_args()
    models = [OnnxModel(*item.split("=", 1)) for item in args.models]
    kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, workers=1, enable_latency_logging=False
    ).start(models)


if __name__ == "__main__":
    main()
