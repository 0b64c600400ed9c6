"""The LLM in ranking, measured: shared-prefix Yes/No scoring equals scoring each full prompt, with the
real in-process model (the session's packaged Gemma 270M)."""

import pytest

pytestmark = pytest.mark.slow

PREFIX = (
    "Task: decide whether a viewer will enjoy a movie.\n\nMovies the viewer liked recently:\n"
    "- <<<Star Wars (1977)>>> (<<<Action, Sci-Fi>>>)\n- <<<Fargo (1996)>>> (<<<Crime, Drama>>>)\n\n"
)
SUFFIXES = [
    f"Candidate movie: <<<{t}>>>; genres: <<<{g}>>>\nWill the viewer enjoy the candidate movie? Answer Yes or No.\nAnswer:"
    for t, g in [("Toy Story (1995)", "Animation"), ("Heat (1995)", "Action, Crime, Thriller"),
                 ("Wallace & Gromit: The Best of Aardman Animation (1996)", "Animation, Comedy"), ("Alien", "Horror")]
]


def test_shared_prefix_scores_equal_full_prompts(local_llm):
    full = local_llm.yes_probabilities([PREFIX + s for s in SUFFIXES])
    t0 = local_llm.tokens_run
    shared = local_llm.yes_probabilities_shared(PREFIX, SUFFIXES)
    used = local_llm.tokens_run - t0
    assert len(shared) == len(full) and all(p is not None for p in shared)
    assert max(abs(a - b) for a, b in zip(full, shared)) < 1e-4
    assert len({round(p, 4) for p in shared}) > 1, "every candidate got the same score: the suffix was ignored"
    naive_tokens = sum(local_llm.count_tokens(PREFIX + s) for s in SUFFIXES)
    assert used < naive_tokens - 2 * local_llm.count_tokens(PREFIX) // 2, "the prefix was run more than once"
