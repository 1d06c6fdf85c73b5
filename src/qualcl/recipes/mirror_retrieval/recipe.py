"""The mirror-retrieval recipe on the shared driver: data → metric-learning training → exact retrieval evaluation."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from qualcl.evaluation import RetrievalIndex
from qualcl.metrics import dr_graded_relevance, retrieval_metrics, stratified_retrieval_metrics
from qualcl.recipes import ablation
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader, train_loader
from qualcl.recipes.mirror_retrieval.config import SPEC, MirrorRetrievalConfig
from qualcl.recipes.mirror_retrieval.data import RetrievalData, RetrievalDataset, load_retrieval_data
from qualcl.recipes.mirror_retrieval.model import MirrorRetrievalNet
from qualcl.recipes.mirror_retrieval.modules import RetrievalTraining
from qualcl.recipes.plots import plot_embedding, plot_grouped_bars, plot_retrieval_grid
from qualcl.recipes.run_folder import ModelCard, count, strata_table

__all__ = ["MIRROR_RETRIEVAL", "MirrorRetrievalRecipe", "run_ablation", "run_mirror_retrieval"]

STAGE = "train"
PAPER = (
    'Fang et al., "Deep metric learning with mirror attention and fine triplet loss for fundus image '
    'retrieval in ophthalmology", Biomedical Signal Processing and Control 80, 104277 (2023)'
)
GRADES = 5
#: Largest ``queries × ranks`` the evaluation ranks, so that mAP@R (which needs R ranks per query) stays affordable.
MAX_RANKED = 20_000_000
Ctx = RunContext[MirrorRetrievalConfig]


class MirrorRetrievalRecipe(Recipe[MirrorRetrievalConfig, RetrievalData, RetrievalTraining]):
    """Fundus image retrieval with mirror attention and the fine triplet loss, end to end.

    Stages: (1) data — database = training + validation images, queries = test images (the
    public FundusDR protocol); (2) ``train`` — the metric loss on GeM descriptors of the two
    mirror-attention branches, optional mirror reconstruction and grade BCE, the best epoch chosen
    by leave-one-out validation mAP@k; (3) evaluation — exact cosine search
    (:class:`qualcl.evaluation.RetrievalIndex`), P@k, R@k, mAP@k (two normalisations), MRR,
    graded NDCG@k, mAP@R and the public code's HR@k / legacy mAP@k, overall, per query grade and
    per query quality level. Plots: query + top-k grids per quality level (hits framed), P@k per
    grade and quality level, the descriptor map, training curves.

    Reference:
        Fang et al., "Deep metric learning with mirror attention and fine triplet loss for fundus
        image retrieval in ophthalmology", BSPC 2023.
    """

    spec, paper = SPEC, PAPER

    def load_data(self, ctx: Ctx) -> RetrievalData:
        """Generate (once) or read the images; split database / validation / queries."""
        return load_retrieval_data(ctx.config.data, ctx.dataset_root(ctx.config.data), progress=ctx.image_progress)

    def setup(self, ctx: Ctx, data: RetrievalData) -> RetrievalTraining:
        """The network (randomly initialised) in its training module."""
        net = MirrorRetrievalNet(ctx.config.model, num_grades=GRADES, in_chans=data.train.images.shape[1])
        return RetrievalTraining(net, ctx.config.train, k=ctx.config.eval.k, num_grades=GRADES)

    def stages(self, config: MirrorRetrievalConfig) -> list[Stage]:
        """One stage, ``train``."""
        return [Stage(STAGE, self.train)]

    def train(self, ctx: Ctx, data: RetrievalData, module: RetrievalTraining) -> None:
        """Metric learning over the training images, the best epoch by validation mAP@k."""
        config, cfg = ctx.config, ctx.config.train
        dataset = RetrievalDataset(data.train, random_mirrors=config.model.mirrors == "random", seed=config.seed)
        ctx.fit(
            STAGE,
            module,
            train_loader(dataset, cfg.batch_size, seed=config.seed),
            eval_loader(RetrievalDataset(data.val), cfg.batch_size),
            weights={"mirror_retrieval": module.net},
            max_epochs=cfg.epochs,
            monitor="val/map",
            find_unused_parameters=config.model.attention == "official",  # f_h is unused there
            info={"epochs": cfg.epochs},
        )

    def evaluate(self, ctx: Ctx, data: RetrievalData, module: RetrievalTraining) -> dict[str, Any]:
        """Exact search of the test queries in the database; metrics overall, per grade, per quality."""
        k, database, queries = ctx.config.eval.k, data.database, data.test

        def forward(batch: Any) -> dict[str, Tensor]:
            return {"d": module.net(batch[0]).descriptor.float()}

        # (N, D) descriptors of the database and the queries (deterministic mirrors), gathered from every rank
        db, q = (
            ctx.predict(forward, RetrievalDataset(t), batch_size=ctx.config.train.batch_size, modules=[module.net])["d"]
            for t in (database, queries)
        )
        largest_class = int(torch.bincount(database.label).max())
        ranks = max(k, largest_class) if len(queries) * max(k, largest_class) <= MAX_RANKED else k
        ranked = RetrievalIndex(db, database.label).search(q, min(ranks, len(database))).indices
        if ranked.shape[1] < k:  # a database smaller than k: the missing ranks are misses (padding)
            ranked = torch.cat([ranked, ranked.new_full((ranked.shape[0], k - ranked.shape[1]), -1)], dim=1)
        gains = dr_graded_relevance(GRADES)
        strata = [(queries.label, [f"grade {g}" for g in range(GRADES)]), (queries.quality, queries.quality_names)]
        by_grade, by_quality = (
            stratified_retrieval_metrics(queries.label, database.label, ranked, k, ids, names, graded_relevance=gains)
            for ids, names in strata
        )
        by_quality.pop("overall")
        test = {"overall": by_grade.pop("overall"), "by_grade": by_grade, "by_quality": by_quality}
        if ctx.run.writable:
            per_query = retrieval_metrics(
                queries.label, database.label, ranked, k, graded_relevance=gains, per_query=True
            )
            self._plots(ctx, data, q, ranked, per_query[f"precision@{k}"])
        return {
            "test": test,
            "data": {
                "database_images": len(database),
                "train_images": len(data.train),
                "val_images": len(data.val),
                "query_images": len(queries),
                "database_grades": torch.bincount(database.label, minlength=GRADES).tolist(),
                "query_quality": torch.bincount(queries.quality, minlength=len(queries.quality_names)).tolist(),
                "ranked": int(ranked.shape[1]),
            },
            "descriptor_dim": int(db.shape[1]),
            "best_epoch": ctx.records.get(STAGE, {}).get("best_epoch"),
        }

    def _plots(self, ctx: Ctx, data: RetrievalData, q: Tensor, ranked: Tensor, precision: Tensor) -> None:
        """P@k per grade and quality level, the descriptor map, the query + top-k grid."""
        k, queries, database = ctx.config.eval.k, data.test, data.database
        names = list(queries.quality_names)
        # P@k per query grade, one bar series per quality level (does a degraded query still find its grade?)
        precision = precision.double()
        bars = {
            name: {
                str(g): float(precision[(queries.quality == level) & (queries.label == g)].nanmean())
                for g in range(GRADES)
            }
            for level, name in enumerate(names)
        }
        plot_grouped_bars(
            bars,
            ctx.run.path("plots", "precision_per_grade.png"),
            title=f"P@{k} of the test queries by grade and quality",
            xlabel="query DR grade",
            ylabel=f"P@{k}",
        )
        plot_embedding(
            q,
            queries.label,
            [str(g) for g in range(GRADES)],
            ctx.run.path("plots", "descriptor_map.png"),
            title="Test descriptors by DR grade",
        )
        # query + top-k grid: per quality level, queries spread over the grades (highest first)
        chosen: list[int] = []
        per_level = ctx.config.eval.grid_queries
        for level in range(len(names)):
            members = [i for i in range(len(queries)) if int(queries.quality[i]) == level]
            members.sort(key=lambda i: (-int(queries.label[i]), i))
            chosen += members[:: max(1, len(members) // per_level)][:per_level]
        if not chosen:
            return
        rows = ranked[chosen, : min(k, 8)]
        found = rows >= 0  # padding (a database smaller than k): a black image, "—"
        grades = torch.where(found, database.label[rows.clamp_min(0)], -1)
        plot_retrieval_grid(
            queries.images[chosen],
            database.images[rows.clamp_min(0)] * found[..., None, None, None],
            [f"grade {int(queries.label[i])} · {names[int(queries.quality[i])]}" for i in chosen],
            [[f"g{int(g)}" if g >= 0 else "—" for g in r.tolist()] for r in grades],
            grades == queries.label[chosen].unsqueeze(1),
            ctx.run.path("plots", "retrieval_grid.png"),
            title=f"Top-{rows.shape[1]} results (green: same grade)",
        )

    def ablation_columns(self, config: MirrorRetrievalConfig) -> dict[str, str]:
        """mAP@k first (shown per stratum), then P@k, NDCG@k, mAP@R and the public code's legacy mAP@k."""
        k = config.eval.k
        return {
            f"map@{k}": f"mAP@{k}",
            f"precision@{k}": f"P@{k}",
            f"ndcg@{k}": f"NDCG@{k}",
            "map@r": "mAP@R",
            f"map_legacy@{k}": f"legacy mAP@{k}",
        }

    def ablation_cells(self, config: MirrorRetrievalConfig, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
        """All test queries, then per query grade, then per query quality level."""
        test = metrics["test"]
        return {"overall": test["overall"], **test["by_grade"], **test["by_quality"]}

    def ablation_notes(self, config: MirrorRetrievalConfig) -> str:
        """The protocol, and what the paper publishes."""
        k = config.eval.k
        return (
            f"Encoder `{config.model.encoder}`, {count(config.train.epochs, 'epoch')}. Database = training + "
            f"validation images, queries = test images; relevance = same DR grade. mAP@{k} divides by the relevant "
            f"items retrieved; legacy mAP@{k} is the public FundusDR code's (divides by {k}). The paper publishes no "
            "numbers (only its abstract is public)."
        )

    def model_card(
        self, ctx: Ctx, data: RetrievalData, module: RetrievalTraining, results: dict[str, Any]
    ) -> ModelCard:
        """Headline metrics (the ablation's and P@1), the per-grade and per-quality table, the plots."""
        config, m, t = ctx.config, ctx.config.model, ctx.config.train
        summary = (
            f"Preset `{config.preset}`, seed {config.seed}, dataset `{config.data.dataset}` at "
            f"{config.data.image_size} px. Encoder `{m.encoder}`, mirror attention `{m.attention}` "
            f"(mirrors `{m.mirrors}`), "
            + ("GeM descriptor" if not m.projection else "linear projection of the GeM descriptor")
            + f" ({results['descriptor_dim']} dimensions); metric loss "
            f"`{t.metric_loss}`, reconstruction {m.reconstruction}, grade BCE {m.classifier}. "
            f"{count(t.epochs, 'epoch')} on {len(data.train)} images; best epoch {results.get('best_epoch')} by "
            f"validation mAP@{config.eval.k}. Database {len(data.database)} images (train + validation), "
            f"{len(data.test)} queries (test)."
        )
        columns = {**self.ablation_columns(config), "precision@1": "P@1"}
        cells = {name: {**v, "n": v.get("queries", 0)} for name, v in self.ablation_cells(config, results).items()}
        overall = results["test"]["overall"]
        return ModelCard(
            title=f"Mirror-attention retrieval ({m.encoder}) on {config.data.dataset}",
            paper=PAPER,
            summary=summary,
            headline={label: overall[key] for key, label in columns.items() if key in overall},
            table=strata_table({"test queries": cells}, columns),
            plots=[f"{STAGE}.png", "retrieval_grid.png", "precision_per_grade.png", "descriptor_map.png"],
        )


#: The mirror-retrieval recipe.
MIRROR_RETRIEVAL = MirrorRetrievalRecipe()

#: ``MIRROR_RETRIEVAL.run(config, out, *, callbacks=())``: the run end to end into ``out``; re-running resumes.
run_mirror_retrieval = MIRROR_RETRIEVAL.run

#: ``run_ablation(config, out, *, seeds, variants, progress, run_missing)``: the declared ablation
#: (:data:`~qualcl.recipes.mirror_retrieval.config.ABLATIONS`) by the one runner
#: (:func:`qualcl.recipes.ablation.run_ablation`).
run_ablation = functools.partial(ablation.run_ablation, MIRROR_RETRIEVAL)
