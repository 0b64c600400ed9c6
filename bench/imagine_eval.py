"""Does personalized image generation personalize? A CLIP-similarity check (needs real weights).

    .venv/bin/python bench/imagine_eval.py --path STORE [--users 50] [--steps 2] [--size 512] [--out reports/imagine]

STORE is an engine folder whose items were indexed WITH real CLIP weights and item images (posters),
so each item has a CLIP ``image`` vector, plus events. For each of ``--users`` sampled users (seeded;
users with at least ``--min-liked`` liked items that have posters):

1. personalized: ``Engine.generate_image(user)`` (no user prompt: a poster for a new film they would like);
2. control: the same pipeline, seed and steps with the non-personalized prompt ``--control-prompt``.

Score of an image for a user = cos(CLIP(image), mean CLIP vector of the user's own liked posters)
minus the mean of that cosine over the other sampled users' poster centroids. The personalized
score should exceed the control's; the script reports both means, the paired difference and a 95%
bootstrap interval. It exits with a clear message (status 2) when CLIP or image-model weights are
unavailable (e.g. offline). No result from this script is claimed in the README.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

from engine import Engine
from engine.errors import PersonaError
from engine.imagine import ImageRequest


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


def _boot(x: np.ndarray, seed: int, n: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = rng.choice(x, size=(n, len(x)), replace=True).mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def fail(msg: str) -> int:
    print(f"imagine_eval: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", required=True)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--min-liked", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--control-prompt", default="a poster for a new film, cinematic lighting, detailed")
    ap.add_argument("--out", default="reports/imagine")
    args = ap.parse_args(argv)
    if args.users < 50:
        return fail("use at least 50 users (--users)")

    with Engine.open(args.path, {"llm": {"backend": "none"}}) as eng:
        comps = eng.components
        if comps.clip is None or not comps.meaningful_clip:
            return fail(f"real CLIP weights are unavailable ({comps.clip_error or 'clip disabled or pretrained=None'}); nothing was measured")
        try:
            gen = comps.image_generator
            gen.pipeline()  # load the weights now: fail before any work
        except PersonaError as e:
            return fail(f"image model weights are unavailable ({e}); nothing was measured")

        # users with enough liked items that have poster (CLIP image) vectors
        rng = random.Random(args.seed)
        users = eng.event_log.user_ids()
        rng.shuffle(users)
        centroids, picked = {}, []
        for uid in users:
            ctx = eng.user_context(uid)
            vecs = [ctx.items[e.item_id].vectors.get("image") for e in ctx.pos if e.item_id in ctx.items and ctx.items[e.item_id].vectors]
            vecs = [v for v in vecs if v]
            if len(vecs) >= args.min_liked:
                centroids[uid] = _unit(np.mean(_unit(np.asarray(vecs, dtype=np.float32)), axis=0))
                picked.append(uid)
            if len(picked) == args.users:
                break
        if len(picked) < 50:
            return fail(f"only {len(picked)} users have >= {args.min_liked} liked items with CLIP poster vectors (need 50)")

        C = np.stack([centroids[u] for u in picked])
        rows = []
        for i, uid in enumerate(picked):
            seed = args.seed * 100_003 + i
            out = eng.generate_image(uid, seed=seed, steps=args.steps, size=args.size)
            steps, (w, h) = out.steps, out.size
            ctrl, _ = gen.generate(ImageRequest(args.control_prompt, seed=seed, steps=steps, width=w, height=h, guidance=eng.settings.image.guidance))
            emb = _unit(np.asarray(comps.clip_image.encode([out.images[0], ctrl[0]]), dtype=np.float32))
            sims = emb @ C.T  # (2, users)
            others = np.delete(sims, i, axis=1).mean(axis=1)
            score = sims[:, i] - others
            rows.append({"user_id": uid, "prompt": out.prompt, "personalized": float(score[0]), "control": float(score[1]), "nsfw": out.nsfw[0]})
            print(f"{i + 1}/{len(picked)} user {uid}: personalized {score[0]:+.4f} control {score[1]:+.4f}", flush=True)

    p = np.array([r["personalized"] for r in rows])
    c = np.array([r["control"] for r in rows])
    summary = {
        "users": len(rows), "model": eng.settings.image.model, "control_prompt": args.control_prompt,
        "personalized_mean": float(p.mean()), "personalized_ci95": _boot(p, args.seed),
        "control_mean": float(c.mean()), "control_ci95": _boot(c, args.seed),
        "difference_mean": float((p - c).mean()), "difference_ci95": _boot(p - c, args.seed),
        "flagged_by_safety_checker": int(sum(r["nsfw"] for r in rows)),
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "imagine_eval.json").write_text(json.dumps({"summary": summary, "users": rows}, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
