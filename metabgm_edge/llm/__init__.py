"""A lean LLM runtime: exported bundles on onnxruntime, tokenizers and NumPy (no torch).

    from metabgm_edge.llm import LLM, GenerationConfig
    llm = LLM.load("engines/smollm2-135m-int8")
    print(llm.chat([ChatMessage("user", "Describe a rainy forest.")]).text)

The text stages reach it through :class:`metabgm_edge.text.llm.LLMText`; nothing here knows
about them.
"""

from metabgm_edge.llm.runtime import LLM, DecodeState, GenerationConfig, GenerationResult

__all__ = ["LLM", "DecodeState", "GenerationConfig", "GenerationResult"]
