"""A model that makes spans of its own with OpenTelemetry's API (tests/test_tracing.py):
they join the request's trace under the replica's server span."""

from opentelemetry import trace

from workers.service import Service

tracer = trace.get_tracer("traced-model")


class Traced(Service):
    def infer(self, prompt: str) -> dict:
        with tracer.start_as_current_span("model work") as span:
            span.set_attribute("model.prompt_length", len(prompt))
            return {"text": prompt.upper()}
