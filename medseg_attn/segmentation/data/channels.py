"""A sequence missing: multi-channel models (T1, T2, FLAIR, ...) that train with channel dropout and predict cases
that lack some of their channels.

A missing channel is filled with the value the normalisation maps to zero (the channel's mean, after the z-score
of the MR preset) inside the body, and the preprocessing's background value outside it, on the network grid: the
same in training (:class:`RandChannelDropoutd`, after the intensity augmentation) and in prediction
(:meth:`InputChannels.fill`, after the preprocessing of the channels given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai import transforms as mt

from medseg_attn.errors import UserError

__all__ = ["InputChannels", "RandChannelDropoutd", "channel_names"]


def channel_names(saved: Sequence[str] | None, count: int) -> tuple[str, ...]:
    """A model's channel names: dataset.json's ``channel_names`` / ``modality`` kept in the checkpoint, else
    ``0``, ``1``, ... (models trained before the names were kept)."""
    names = tuple(str(n) for n in (saved or ()))
    return names if len(names) == count else tuple(str(i) for i in range(count))


@dataclass(frozen=True)
class InputChannels:
    """Which of a model's channels an input holds, in the order of its files (``_0000``, ``_0001``, ...).

    Attributes:
        names: the model's channel names, in the network's channel order.
        given: indices into ``names`` of the channels the input holds, in file order.
    """

    names: tuple[str, ...]
    given: tuple[int, ...]

    @classmethod
    def choose(cls, names: Sequence[str], chosen: Sequence[str] | None) -> InputChannels:
        """The channels ``predict --channels`` names (None: all of them, in the model's order).

        Raises:
            UserError: a name the model does not have (the model's names listed), a name given twice, or none.
        """
        names = tuple(names)
        if chosen is None:
            return cls(names, tuple(range(len(names))))
        chosen = [str(c).strip() for c in chosen if str(c).strip()]
        lower = [n.lower() for n in names]
        unknown = [c for c in chosen if c.lower() not in lower]
        if unknown or not chosen:
            raise UserError(f"--channels {','.join(chosen)}: {', '.join(unknown) or 'nothing'} is not a channel of "
                            f"this model (its channels: {', '.join(names)})")
        twice = sorted({c for c in chosen if [x.lower() for x in chosen].count(c.lower()) > 1})
        if twice:
            raise UserError(f"--channels {','.join(chosen)}: {', '.join(twice)} is listed twice; name each channel "
                            f"the input holds once")
        return cls(names, tuple(lower.index(c.lower()) for c in chosen))

    @property
    def missing(self) -> tuple[str, ...]:
        """The model's channels the input lacks (filled)."""
        return tuple(n for i, n in enumerate(self.names) if i not in self.given)

    @property
    def given_names(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.given)

    def fill(self, image: torch.Tensor, background: float | None) -> torch.Tensor:
        """The preprocessed channels given (G, *S) -> the model's channels (C, *S): missing ones 0 inside the body
        and ``background`` outside it (where every given channel holds it; None: 0 everywhere)."""
        if not self.missing:
            return image
        data = torch.as_tensor(image)
        out = data.new_zeros((len(self.names), *data.shape[1:]))
        for position, index in enumerate(self.given):
            out[index] = data[position]
        if background is not None:
            outside = (data == background).all(dim=0)
            for index in (i for i in range(len(self.names)) if i not in self.given):
                out[index][outside] = background
        if hasattr(image, "copy_meta_from"):  # keep the MetaTensor's affine for resampling back
            from monai.data import MetaTensor

            return MetaTensor(out, meta=dict(image.meta))  # the meta holds the affine
        return out


class RandChannelDropoutd(mt.RandomizableTransform, mt.MapTransform):
    """Channel dropout: each channel of a multi-channel patch is dropped with probability ``prob`` (filled as a
    missing channel is at prediction: 0 inside the body, ``background`` outside it); at least one channel is
    always kept."""

    def __init__(self, prob: float, background: float | None = None, key: str = "image") -> None:
        mt.MapTransform.__init__(self, [key])
        mt.RandomizableTransform.__init__(self, 1.0)
        self.drop_probability, self.background, self.key = float(prob), background, key
        self._dropped: np.ndarray = np.zeros(0, bool)

    def randomize(self, channels: int) -> None:
        dropped = self.R.random_sample(channels) < self.drop_probability
        if dropped.all():  # never every channel: one kept at random
            dropped[self.R.randint(channels)] = False
        self._dropped = dropped

    def __call__(self, data: dict) -> dict:
        image = data[self.key]
        channels = int(image.shape[0])
        if channels < 2 or self.drop_probability <= 0:
            return data
        self.randomize(channels)
        if not self._dropped.any():
            return data
        kept = tuple(int(i) for i in np.flatnonzero(~self._dropped))
        names = tuple(str(i) for i in range(channels))
        data = dict(data)
        data[self.key] = InputChannels(names, kept).fill(torch.as_tensor(image)[list(kept)], self.background)
        return data
