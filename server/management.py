"""`slimserve.v1.Management`: ListVariants and Explain."""

from __future__ import annotations

import grpc

from protos import slimserve_pb2 as pb
from protos import slimserve_pb2_grpc
from server.host import ModelHost
from server.servicer import maps_errors
from variants.report import pick_profile


class ManagementServicer(slimserve_pb2_grpc.ManagementServicer):
    """Variants with their measurements; Explain says which variant a request would get."""

    def __init__(self, host: ModelHost, hardware_key: str) -> None:
        self._host = host
        self._hardware_key = hardware_key

    @maps_errors
    async def ListVariants(
        self, request: pb.ListVariantsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListVariantsResponse:
        names = [request.model] if request.model else list(self._host.models)
        response = pb.ListVariantsResponse()
        for name in names:
            for variant, entry in self._host.model(name).entry.variants.items():
                manifest = entry.manifest
                m, seed = manifest.measurements, manifest.seed_formulas
                response.variants.add(
                    model=name,
                    name=variant,
                    kind=manifest.kind,
                    device=manifest.device,
                    params=m.params,
                    macs=m.macs or 0,
                    size_bytes=m.size_bytes,
                    quality=m.quality,
                    agreement=m.agreement,
                    alpha_params=seed.alpha_params,
                    alpha_bytes=seed.alpha_bytes,
                    beta_params=seed.beta_params,
                    beta_bytes=seed.beta_bytes,
                    profiles=[
                        pb.VariantProfile(
                            label=profile.label,
                            hardware_key=key,
                            this_machine=key == self._hardware_key,
                            latency=[
                                pb.LatencyPoint(batch_size=b, p50_ms=s.p50_ms, p95_ms=s.p95_ms)
                                for b, s in sorted(profile.latency.items())
                            ],
                            speedup=profile.speedup,
                        )
                        for key, profile in manifest.profiles.items()
                    ],
                    ready=True,
                )
        return response

    @maps_errors
    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        hosted = self._host.model(request.model)
        config = hosted.entry.config
        chosen = config.default_variant
        # Until the router lands, every request without model_version gets the default variant.
        reason = "no router yet: requests without model_version get the model's default variant"
        candidates = []
        for variant, entry in hosted.entry.variants.items():
            profile = pick_profile(entry.manifest.profiles, self._hardware_key)
            batch1 = profile.latency.get(1) if profile else None
            candidates.append(
                pb.Candidate(
                    variant=variant,
                    predicted_ms=batch1.p50_ms if batch1 else 0.0,
                    quality=entry.manifest.measurements.quality.get(config.quality_metric.name, 0.0),
                    chosen=variant == chosen,
                    reason="default variant" if variant == chosen else "not the default variant",
                )
            )
        return pb.ExplainResponse(model=config.name, chosen=chosen, reason=reason, candidates=candidates)
