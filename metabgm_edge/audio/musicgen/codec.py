"""EnCodec decoding in chunks while generation goes on, with joins that do not show.

EnCodec's decoder is convolutional with an LSTM: a sample depends on every frame before it (the
LSTM) and on a few frames after it (the non-causal convolutions). :class:`StreamingDecoder`
decodes each chunk with ``left`` frames of context before it (the codes it continues from: for the
first chunk of a segment, the prompt) and waits for ``right`` frames after it; consecutive chunks
overlap by ``overlap`` samples, which are crossfaded. The result matches decoding the whole
segment at once within a small tolerance (tested), and the first chunk is ready after
``first`` frames instead of the whole segment.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class StreamingDecoder:
    def __init__(
        self,
        decode: Callable[[np.ndarray], np.ndarray],
        hop: int,
        *,
        start: np.ndarray | None,
        num_codebooks: int,
        first: int = 20,
        chunk: int = 50,
        left: int = 50,
        right: int = 4,
        overlap: int = 256,
    ) -> None:
        """``start`` (K, P): codes before the first new frame (their audio is not emitted)."""
        self.decode_fn = decode
        self.hop = hop
        self.first, self.chunk, self.left, self.right = first, chunk, left, right
        self.overlap = min(overlap, hop * max(1, right))
        empty = np.zeros((num_codebooks, 0), dtype=np.int64)
        self.codes = [empty if start is None else np.asarray(start, dtype=np.int64)]
        self.frames = self.codes[0].shape[1]
        self.emitted = self.frames
        """Frames whose audio has been handed out (or held for the next crossfade)."""
        self._held: np.ndarray | None = None
        self.decoded_frames = 0
        """Frames run through the codec (context included): the cost of streaming."""

    def _all(self) -> np.ndarray:
        if len(self.codes) > 1:
            self.codes = [np.concatenate(self.codes, axis=1)]
        return self.codes[0]

    def push(self, frame: np.ndarray) -> np.ndarray | None:
        """Add one frame (K,); return audio when a chunk is ready, else None."""
        self.codes.append(np.asarray(frame, dtype=np.int64).reshape(-1, 1))
        self.frames += 1
        size = self.first if self._held is None else self.chunk
        if self.frames - self.right - self.emitted < size:
            return None
        return self._emit(self.frames - self.right, final=False)

    def finish(self) -> np.ndarray:
        """The rest of the audio, to the last frame."""
        return self._emit(self.frames, final=True)

    def _emit(self, until: int, *, final: bool) -> np.ndarray:
        codes = self._all()
        lo = max(0, self.emitted - self.left)
        audio = self.decode_fn(codes[:, lo:])
        self.decoded_frames += codes.shape[1] - lo
        start = (self.emitted - lo) * self.hop
        stop = (until - lo) * self.hop
        piece = audio[start:stop]
        held = self._held
        if held is not None:
            # The held samples end the previous chunk; this decode saw more of what follows them:
            # fade from the old view to the new one over the held length (linearly: the two views
            # are the same music, so equal gain keeps the level).
            n = held.shape[0]
            if start >= n:
                fade_in = ((np.arange(n, dtype=np.float32) + 0.5) / n)[:, None]
                piece = np.concatenate([held + (audio[start - n : start] - held) * fade_in, piece])
            else:
                piece = np.concatenate([held, piece])
        self.emitted = until
        if final or self.overlap == 0:
            self._held = None
            return piece
        n = min(self.overlap, piece.shape[0])
        self._held = piece[piece.shape[0] - n :].copy()
        return piece[: piece.shape[0] - n]
