"""LLF load tests: Locust scenarios that measure an OpenAI-compatible LLM server.

Run them with ``python -m loadtests run`` (or ``make loadtest``). The metric
definitions follow ``vllm bench serve`` so that the two can be compared key for key.
"""

EXIT_PASS = 0
EXIT_MISSED = 1
EXIT_USAGE = 2
EXIT_INVALID = 3

EXIT_MEANINGS = {
    EXIT_PASS: "every target met",
    EXIT_MISSED: "a target was missed",
    EXIT_USAGE: "usage or configuration error",
    EXIT_INVALID: "invalid or inconclusive run",
}
