"""The CUDA-graph step's input staging (sm1/batched_step.py's GraphInputs): what a replay reads after any
sequence of calls is exactly the caller's tokens and slots, then padding. Staging is plain tensor copies, so
it is checked here on the CPU; tests/model/test_step_triton.py replays real graphs on a GPU."""

import torch

from sm1.batched_step import GraphInputs

PAD = -1


def staged(inputs: GraphInputs, tokens: list[int], slots: list[int]) -> bool:
    """The buffers hold `slots` then padding slots, and `tokens` in their first rows."""
    want = torch.tensor(slots + [PAD] * (inputs.slots.numel() - len(slots)))
    return torch.equal(inputs.slots, want) and inputs.tokens[: len(tokens)].tolist() == tokens


def test_any_sequence_of_batches_leaves_the_callers_rows_then_padding():
    inputs = GraphInputs(8, PAD, torch.device("cpu"))
    assert staged(inputs, [], [])
    calls = [([5, 6, 7, 8, 9], [4, 0, 2, 6, 1]), ([1, 2], [3, 5]), ([3, 3, 3], [3, 5, 7]), ([4] * 8, list(range(8)))]
    calls += [([2], [6]), ([], [])]
    for tokens, slots in calls:
        inputs.stage(torch.tensor(tokens, dtype=torch.long), torch.tensor(slots, dtype=torch.long))
        assert staged(inputs, tokens, slots), (tokens, slots)


def test_the_same_slots_tensor_is_copied_only_when_changed():
    inputs = GraphInputs(4, PAD, torch.device("cpu"))
    slots = torch.tensor([2, 0, 1])
    inputs.stage(torch.tensor([7, 8, 9]), slots)
    assert staged(inputs, [7, 8, 9], [2, 0, 1])
    inputs.slots[0] = 3  # behind the stage's back: the next stage of the same, unchanged tensor does not copy it
    inputs.stage(torch.tensor([1, 2, 3]), slots)
    assert staged(inputs, [1, 2, 3], [3, 0, 1])
    slots[0] = 2  # changed through torch (a new version): copied again
    inputs.stage(torch.tensor([1, 2, 3]), slots)
    assert staged(inputs, [1, 2, 3], [2, 0, 1])
    inputs.stage(torch.tensor([4, 5]), slots[:2])  # a view is another tensor: copied, and the third row padded
    assert staged(inputs, [4, 5], [2, 0])
    inputs.stage(torch.tensor([4, 5, 6]), slots)  # the earlier tensor again, after another: copied
    assert staged(inputs, [4, 5, 6], [2, 0, 1])


def test_inference_tensors_which_count_no_versions_are_always_copied():
    inputs = GraphInputs(2, PAD, torch.device("cpu"))
    with torch.inference_mode():
        slots = torch.tensor([1, 0])
    inputs.stage(torch.tensor([3, 4]), slots)
    inputs.slots[0] = 5
    inputs.stage(torch.tensor([3, 4]), slots)
    assert staged(inputs, [3, 4], [1, 0])
