"""MusicGen's codebook delay pattern, in numpy.

The decoder predicts every codebook at every step, but codebook ``k`` runs ``delay(k)`` steps
behind the first (``delay(k) = k`` for mono; for stereo the left/right pair ``2j, 2j+1`` shares
delay ``j``). Column ``c`` of the decoder's sequence holds, for codebook ``k``:

- the pad token while ``c <= delay(k)`` (the start of the sequence),
- prompt frame ``c - delay(k) - 1`` while that is within the prompt (the melodic anchor's codes),
- the pad token once ``c > length - 1 - (depth - 1 - delay(k))`` (the end of the sequence),
- otherwise what the model samples.

``length = prompt + frames + depth`` columns give ``prompt + frames`` whole frames, where
``depth`` is the number of delay steps (codebooks per channel). Frame ``f`` of codebook ``k`` sits
in column ``f + delay(k) + 1``; a frame is complete once column ``f + depth`` is known. This is
transformers' ``build_delay_pattern_mask`` / ``apply_delay_pattern_mask`` and the final revert,
written for a loop that streams frames as they complete.
"""

from __future__ import annotations

import numpy as np


class DelayPattern:
    def __init__(
        self, num_codebooks: int, audio_channels: int, pad: int, prompt: np.ndarray | None, frames: int
    ):
        if audio_channels not in (1, 2) or num_codebooks % audio_channels:
            raise ValueError(f"{num_codebooks} codebooks cannot be split into {audio_channels} channel(s)")
        if frames < 1:
            raise ValueError(f"need at least one frame to generate, got {frames}")
        self.num_codebooks = num_codebooks
        self.depth = num_codebooks // audio_channels
        self.delays = np.arange(num_codebooks) // audio_channels
        self.pad = int(pad)
        self.prompt = (
            np.zeros((num_codebooks, 0), dtype=np.int64)
            if prompt is None
            else np.asarray(prompt, dtype=np.int64)
        )
        if self.prompt.ndim != 2 or self.prompt.shape[0] != num_codebooks:
            raise ValueError(
                f"prompt codes must have shape ({num_codebooks}, frames), got {self.prompt.shape}"
            )
        self.prompt_frames = self.prompt.shape[1]
        self.frames = frames
        self.length = self.prompt_frames + frames + self.depth

    def forced(self, column: int) -> np.ndarray:
        """Per codebook: the value column ``column`` must hold, or -1 where the model decides."""
        out = np.full(self.num_codebooks, -1, dtype=np.int64)
        c = column
        for k, d in enumerate(self.delays):
            if c <= d or c > self.length - 1 - (self.depth - 1 - d):
                out[k] = self.pad
            elif c - d - 1 < self.prompt_frames:
                out[k] = self.prompt[k, c - d - 1]
        return out

    def apply(self, column: int, sampled: np.ndarray) -> np.ndarray:
        forced = self.forced(column)
        return np.where(forced >= 0, forced, sampled).astype(np.int64)

    def prefill(self) -> np.ndarray:
        """Columns 0 .. prompt_frames: everything known before the first prediction, (K, P + 1)."""
        return np.stack([self.forced(c) for c in range(self.prompt_frames + 1)], axis=1)

    def frame_of(self, columns: np.ndarray, frame: int) -> np.ndarray:
        """Frame ``frame`` of every codebook from the sequence ``columns`` (K, n)."""
        return columns[np.arange(self.num_codebooks), frame + self.delays + 1]

    def complete_after(self, column: int) -> int:
        """How many frames are complete once columns 0..``column`` are known."""
        return max(0, min(column - self.depth + 1, self.prompt_frames + self.frames))
