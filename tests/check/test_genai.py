"""genai's greedy tokens against eager torch's: the comparison pipeline all reports."""

from pipeline.check.genai import same_tokens


def test_genai_may_stop_at_its_end_of_sequence_id_where_torch_goes_on():
    torch_tokens = [3, 14, 15, 7, 299, 8, 9]
    assert same_tokens(torch_tokens, torch_tokens, eos=299)
    assert same_tokens([3, 14, 15, 7, 299], torch_tokens, eos=299)


def test_a_different_token_or_an_early_stop_without_its_end_id_differs():
    torch_tokens = [3, 14, 15, 7, 299, 8, 9]
    assert not same_tokens([3, 14, 15, 6, 299], torch_tokens, eos=299)  # a token differs
    assert not same_tokens([3, 14, 15, 7], torch_tokens, eos=299)  # stopped, not at its end id
    assert not same_tokens([3, 14, 15, 7, 299, 8, 9, 1], torch_tokens, eos=299)  # longer
