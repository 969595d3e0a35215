"""Compatibility shim: the server moved into the package (`trl_sgcd.testing.llm_server`), the samples too."""

from trl_sgcd.testing.llm_server import VALID_REFERENCE, FakeLLMServer  # noqa: F401
from trl_sgcd.testing.samples import PLANTED, sample_group  # noqa: F401
