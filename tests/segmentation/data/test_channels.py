"""Missing sequences: choosing the channels an input holds, filling the others, and channel dropout in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg_attn.errors import UserError
from medseg_attn.segmentation.data.channels import InputChannels, RandChannelDropoutd, channel_names


def test_channels_are_chosen_by_name_in_file_order():
    chosen = InputChannels.choose(("T1", "T2", "FLAIR"), ["flair", "T1"])
    assert chosen.given == (2, 0) and chosen.missing == ("T2",) and chosen.given_names == ("FLAIR", "T1")
    assert InputChannels.choose(("T1", "FLAIR"), None).missing == ()
    assert channel_names(None, 2) == ("0", "1") and channel_names(["T1"], 2) == ("0", "1")


@pytest.mark.parametrize(("chosen", "message"), [
    (["T2"], "T2 is not a channel of this model (its channels: T1, FLAIR)"),
    (["T1", "t1"], "t1 is listed twice"),
    ([], "nothing is not a channel"),
])
def test_bad_channel_lists_are_one_line(chosen, message):
    with pytest.raises(UserError) as error:
        InputChannels.choose(("T1", "FLAIR"), chosen)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_channel_is_zero_in_the_body_and_background_outside():
    background = -3.0
    given = torch.full((1, 4, 4, 4), background)
    given[0, 1:3, 1:3, 1:3] = 1.5  # the body
    filled = InputChannels(("T1", "FLAIR"), (1,)).fill(given, background)  # the input holds FLAIR only
    assert filled.shape == (2, 4, 4, 4)
    assert torch.equal(filled[1], given[0])
    body = given[0] != background
    assert torch.all(filled[0][body] == 0) and torch.all(filled[0][~body] == background)
    assert torch.all(InputChannels(("T1", "FLAIR"), (0,)).fill(given, None)[1] == 0)  # no background: 0


def test_channel_dropout_drops_each_channel_at_its_rate_and_never_all():
    transform = RandChannelDropoutd(0.4, background=None)
    transform.set_random_state(0)
    image = torch.ones((3, 2, 2, 2))
    outs = [transform({"image": image})["image"] for _ in range(2000)]
    dropped = np.array([[bool((out[c] == 0).all()) for c in range(3)] for out in outs])
    assert not dropped.all(axis=1).any()  # one channel always kept
    rates = dropped.mean(axis=0)
    assert np.all(np.abs(rates - 0.4) < 0.05), rates  # about 0.4 each (all-dropped draws keep one: a bit less)
    single = torch.ones((1, 2, 2, 2))
    assert torch.equal(RandChannelDropoutd(0.9)({"image": single})["image"], single)  # one channel: untouched
