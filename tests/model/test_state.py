"""The per-session state: counted honestly, serialized with a header that refuses what is not ours."""

import pytest
import torch

from sm1.model import SM1, SM1Config
from sm1.state import SM1State, StateFormatError, state_floats


@pytest.mark.parametrize(
    "d_model,n_layer,d_state,ssm,conv",
    [
        (768, 24, 1, 36_864, 110_592),  # DESIGN.md: the 90M comparison model
        (704, 10, 1, 14_080, 42_240),  # the original SM1 130M model: 14,080 is only its ssm part
        (768, 24, 16, 589_824, 110_592),  # the d_state=16 comparison
    ],
)
def test_state_floats_are_reported_by_part(d_model, n_layer, d_state, ssm, conv):
    cfg = SM1Config(vocab_size=443, d_model=d_model, n_layer=n_layer, d_state=d_state)
    floats = state_floats(cfg)
    assert (floats.ssm, floats.conv, floats.total) == (ssm, conv, ssm + conv)
    state = SM1State.zeros(cfg, batch=3)
    assert state.nbytes() == 3 * 4 * floats.total


def stepped_state(cfg: SM1Config, batch: int = 2) -> SM1State:
    torch.manual_seed(0)
    model = SM1(cfg).eval()
    state = model.allocate_state(batch)
    with torch.no_grad():
        for t in range(5):
            model.step(torch.full((batch,), t + 3), state)
    return state


CFG = SM1Config(vocab_size=50, d_model=32, n_layer=2)


def test_state_round_trips_through_bytes_exactly():
    state = stepped_state(CFG)
    back = SM1State.from_bytes(state.to_bytes(CFG), CFG)
    assert torch.equal(back.ssm, state.ssm) and torch.equal(back.conv, state.conv)
    assert back.ssm.abs().sum() > 0


def test_state_from_another_config_is_refused_with_a_clear_error():
    blob = stepped_state(CFG).to_bytes(CFG)
    other = SM1Config(vocab_size=50, d_model=32, n_layer=3)
    with pytest.raises(StateFormatError, match="another config"):
        SM1State.from_bytes(blob, other)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b[:3], "too short"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "damaged"),
        (lambda b: b[:-4], "damaged"),
        (lambda b: b[:4] + b"\x09\x00" + b[6:], "version"),
    ],
)
def test_damaged_state_blob_is_refused(damage, message):
    blob = stepped_state(CFG).to_bytes(CFG)
    with pytest.raises(StateFormatError, match=message):
        SM1State.from_bytes(damage(blob), CFG)


def test_select_and_assign_move_sessions_between_slots():
    state = stepped_state(CFG, batch=3)
    pool = SM1State.zeros(CFG, batch=5)
    pool.assign([4, 0], state.select([2, 1]))
    assert torch.equal(pool.select([4]).ssm, state.select([2]).ssm)
    assert torch.equal(pool.select([0]).conv, state.select([1]).conv)
    assert pool.select([1, 2, 3]).ssm.abs().sum() == 0
