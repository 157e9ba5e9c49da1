"""Vision under CP on 2 gloo ranks: each rank encodes a share of the images with a stand-in
encoder (Linear on patches, then a Linear merging each 2x2 group), embeddings are exchanged and
placed into each rank's own chunks. The result and the gradients (summed over ranks) equal the
single-rank computation, including images whose tokens straddle a CP chunk edge."""

from __future__ import annotations

import torch

from megatron_vlm.parallel.context_parallel import split_batch_for_cp, unsplit
from tests.dist_utils import run_distributed

IMG, VID, C, H, V = 151655, 151656, 12, 6, 50
GRIDS = [[1, 4, 4], [1, 2, 6], [1, 6, 4]]  # 4, 3 and 6 merged tokens


class StandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.patch = torch.nn.Linear(C, 5)
        self.merge = torch.nn.Linear(20, H)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.seen_patch_rows = 0

    def forward(self, pixels, grid_thw):
        self.seen_patch_rows += pixels.shape[0]
        return torch.tanh(self.merge(self.patch(pixels).reshape(-1, 20)))


def make_batch(grids):
    """Three images: sub-sequence 0 = 2 text, image 0, 3 text, image 1, 2 text (14 tokens);
    sub-sequence 1 = 1 text, image 2, 3 text (10); padding tail 8. With CP=2 image 0 spans
    chunks 0|1 of sub-sequence 0 (ranks 0 and 1), image 2 chunks 0|1|2 of sub-sequence 1.
    One image: 1 text, image 0, 1 text (chunks 0|1|2); 3 text; tail 8."""
    n = [t * h * w // 4 for t, h, w in grids]
    if len(grids) == 3:
        s0 = [1, 2] + [IMG] * n[0] + [3, 4, 5] + [IMG] * n[1] + [6, 7]
        s1 = [8] + [IMG] * n[2] + [9, 10, 11]
    else:
        s0, s1 = [1] + [IMG] * n[0] + [3], [8, 9, 10]
    tokens = torch.tensor([s0 + s1 + [0] * 8])
    T = tokens.shape[1]
    g = torch.Generator().manual_seed(1)
    patches = sum(t * h * w for t, h, w in grids)
    return {
        "tokens": tokens,
        "labels": torch.full((1, T), -100),
        "loss_mask": torch.cat([torch.ones(1, T - 8), torch.zeros(1, 8)], 1),
        "position_ids": torch.arange(T).expand(3, 1, T),
        "cu_seqlens": torch.tensor([0, len(s0), len(s0) + len(s1), T], dtype=torch.int32),
        "pixel_values": torch.randn(patches, C, generator=g),
        "image_grid_thw": torch.tensor(grids),
        "token_weights": torch.randn(T, H, generator=g),
    }


def _local_loss(encoder, embedding, shard, group=None):
    from megatron_vlm.parallel.cp_vision import encode_images_cp, place_embeddings

    full = encode_images_cp(
        encoder, shard["pixel_values"], shard["image_grid_thw"], H, group=group,
        encoder_params=list(encoder.parameters()),
    )  # fmt: skip
    tokens = shard["tokens"][0]
    hidden = place_embeddings(embedding(tokens % V), tokens, IMG, full, shard["image_token_rows"])
    index = shard["cp_source_index"]
    weights = shard["token_weights"][index.clamp(min=0)] * (index >= 0)[:, None]
    return hidden, (hidden * weights).sum()


def _rank_fn():
    import torch.distributed as dist

    from megatron_vlm.parallel.context_parallel import gather_from_cp
    from megatron_vlm.parallel.cp_vision import local_token_rows

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = []
    for grids in (GRIDS, GRIDS[:1]):
        torch.manual_seed(0)
        encoder, embedding = StandIn(), torch.nn.Embedding(V, H)
        embedding.weight.data = torch.randn(V, H, generator=torch.Generator().manual_seed(2))
        shard = split_batch_for_cp(make_batch(grids), 2, rank, image_token_id=IMG, video_token_id=VID)
        hidden, loss = _local_loss(encoder, embedding, shard)
        loss.backward()
        grads = {n: p.grad.numpy() for n, p in [*encoder.named_parameters(), ("emb", embedding.weight)]}
        rows = local_token_rows(shard["tokens"][0], IMG, shard["cu_seqlens_padded"])  # the in-model way
        gathered = gather_from_cp(hidden.detach(), shard["cp_partition"])  # every rank: full order
        out.append((hidden.detach().numpy(), grads, encoder.seen_patch_rows, shard["cp_source_index"].numpy(),
                    rows.numpy(), shard["image_token_rows"].numpy(), gathered.numpy()))  # fmt: skip
    return out


def _single_rank(batch, kept):
    """The same loss on one rank over the tokens the split keeps (the trimmed end of the
    padding tail has no loss in training)."""
    encoder, embedding = StandIn(), torch.nn.Embedding(V, H)
    embedding.weight.data = torch.randn(V, H, generator=torch.Generator().manual_seed(2))
    tokens = batch["tokens"][0]
    image_embeds = encoder(batch["pixel_values"], batch["image_grid_thw"])
    hidden = embedding(tokens % V).clone()
    hidden[tokens == IMG] = image_embeds
    loss = (hidden[:kept] * batch["token_weights"][:kept]).sum()
    loss.backward()
    grads = {n: p.grad for n, p in [*encoder.named_parameters(), ("emb", embedding.weight)]}
    return hidden.detach(), grads


def test_vision_cp_matches_single_rank():
    per_rank = run_distributed(_rank_fn, 2, timeout_s=120)
    for case, grids in enumerate((GRIDS, GRIDS[:1])):
        batch = make_batch(grids)
        tokens = batch["tokens"][0]
        part = split_batch_for_cp(batch, 2, 0, image_token_id=IMG, video_token_id=VID)["cp_partition"]
        kept = int(part.cu_seqlens[-1])
        ref_hidden, ref_grads = _single_rank(batch, kept)

        # the first image's tokens really straddle the ranks
        first_image = (tokens == IMG).nonzero().squeeze(1)[: grids[0][1] * grids[0][2] // 4]
        on_rank = [set(per_rank[r][case][3].tolist()) for r in range(2)]
        assert all(on_rank[r] & set(first_image.tolist()) for r in range(2))

        hidden = unsplit([torch.from_numpy(per_rank[r][case][0]) for r in range(2)], part)
        torch.testing.assert_close(hidden[:kept], ref_hidden[:kept], atol=1e-6, rtol=1e-6)
        for r in range(2):
            torch.testing.assert_close(torch.from_numpy(per_rank[r][case][6])[:kept], ref_hidden[:kept])
        for name, ref in ref_grads.items():
            total = sum(torch.from_numpy(per_rank[r][case][1][name]) for r in range(2))
            torch.testing.assert_close(total, ref, atol=1e-5, rtol=1e-5, msg=name)

        for r in range(2):  # rows found from inside the model equal the split's
            assert per_rank[r][case][4].tolist() == per_rank[r][case][5].tolist()

        patches = [t * h * w for t, h, w in grids]
        seen = [per_rank[r][case][2] for r in range(2)]
        assert sum(seen) == sum(patches)  # every image encoded exactly once
        if len(grids) > 1:
            assert max(seen) < sum(patches)  # no rank encoded every image
        else:
            assert sorted(seen) == [0, patches[0]]  # the idle rank still returns zero grads
