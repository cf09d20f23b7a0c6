"""A lean LLM runtime: exported bundles on onnxruntime, tokenizers and NumPy (no torch).

    from metabgm_edge.llm import LLM, GenerationConfig
    llm = LLM.load("engines/smollm2-135m-int8")
    print(llm.chat([ChatMessage("user", "Describe a rainy forest.")]).text)

:class:`LLMText` is the same model behind the two stages' text interface.
"""

from metabgm_edge.llm.backend import LLMText
from metabgm_edge.llm.runtime import LLM, DecodeState, GenerationConfig, GenerationResult

__all__ = ["LLM", "DecodeState", "GenerationConfig", "GenerationResult", "LLMText"]
