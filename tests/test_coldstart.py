"""The off-policy cold start (``train.cold_start_steps``): its loss is transformers' own
cross-entropy on the response tokens, its gradient that of one plain forward over all rows
however they are split into ranks and micro-batches, and its LM head never sees more than a
chunk of positions (no rows x length x vocabulary logits)."""
import json

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from pgopd.coldstart import cold_start_rows, sft_batch, sft_nll_sum
from tiny import torchrun_script


def _model(seed=0, V=40):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
    return Qwen2ForCausalLM(cfg).eval()


def test_sft_nll_is_transformers_cross_entropy_on_the_responses():
    model = _model()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    responses = [[20, 21, 1], [22, 1], [23, 24, 25, 26, 1]]
    b = sft_batch(prompts, responses, pad_id=0)
    assert b["mask_BT"].sum() == sum(map(len, responses))
    labels = torch.full_like(b["input_ids_BS"], -100)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        labels[i, len(p):len(p) + len(r)] = torch.tensor(r)
    ref = model(input_ids=b["input_ids_BS"], attention_mask=b["attention_BS"], labels=labels).loss
    for chunk in (1, 3, 100):
        ours = sft_nll_sum(model, model, b, chunk) / b["mask_BT"].sum()
        assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_sft_lm_head_sees_at_most_a_chunk_of_positions():
    """The head of the forward covers one position per row (``logits_to_keep=1``); the loss's
    head calls ``chunk`` positions each: never the rows x length the plain forward would."""
    model = _model()
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _m, a: seen.append(a[0].numel() // a[0].shape[-1]))
    b = sft_batch([[5, 6]] * 4, [list(range(2, 30))] * 4, pad_id=0)
    sft_nll_sum(model, model, b, chunk=16)
    assert seen and max(seen) <= 16 and sum(seen) == 4 + 4 * 28  # forward's 4 rows + the 112 trained positions


def test_cold_start_rows_refuses_a_cache_without_correct_samples(tmp_path):
    (tmp_path / "samples.jsonl").write_text(json.dumps({"id": "a", "tokens": [3, 1], "correct": False}) + "\n")
    with pytest.raises(ValueError, match="cold_start_steps"):
        cold_start_rows(tmp_path, [{"id": "a"}])
    (tmp_path / "samples.jsonl").write_text(json.dumps({"id": "a", "tokens": [3, 1], "correct": True}) + "\n")
    assert cold_start_rows(tmp_path, [{"id": "b"}, {"id": "a"}]) == [(1, [3, 1])]


@pytest.mark.slow
@pytest.mark.parametrize("nproc,stage,budget", [(1, 0, 0), (2, 2, 40), (2, 2, 24)])
def test_cold_start_step_gradient_matches_one_plain_forward(tmp_path, nproc, stage, budget):
    """One process with one micro-batch, and two ZeRO-2 processes with micro-batches of 40
    padded tokens (3 on each rank) and of 24 (4 and 5: one rank runs an empty micro-batch):
    the gradient before the step is that of ``model(labels=...).loss`` over all 12 rows
    (~15 s each on 2 cores)."""
    torchrun_script("cold_start_check.py", tmp_path, stage, budget, nproc=nproc)
    for rank in range(nproc):
        rec = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert rec["loss"] == pytest.approx(rec["ref_loss"], rel=1e-5), rec
        assert rec["grad_max_abs_diff"] <= 1e-5 * rec["grad_scale"], rec
        assert rec["head_rows_max"] <= 12, rec  # chunks of 5 positions; the forward's rows per micro-batch
