"""The `anydistill` command: demo, run, validate, methods, recipes, evaluate-synset, report.

User errors (bad recipes, missing files or packages, a run directory that exists) print one line
per problem, no traceback, and exit with status 2; nothing is written before validation passes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from anydistill.core.errors import AnydistillError

# `anydistill demo FAMILY` runs the shipped recipe recipes/demo/<family>.yaml: a few minutes at most on
# a laptop CPU, offline, printing teacher / baseline / distilled student with quality, size and speed.
DEMO_FAMILIES = ("classifier", "lm", "diffusion", "dataset")
DEMO_RECIPES = {family: f"demo/{family}" for family in DEMO_FAMILIES}


def _print_problems(error: AnydistillError) -> int:
    for line in str(error).splitlines():
        print(f"error: {line}", file=sys.stderr)
    return 2


def command_run(args: argparse.Namespace) -> int:
    from anydistill.catalog import load_recipe
    from anydistill.core.rundir import RunDir, free_name
    from anydistill.report import console_table
    from anydistill.runner import is_main_process, run_recipe

    if args.resume:
        if args.recipe or args.set:
            raise AnydistillError("--resume continues a run with its saved config.yaml; drop the recipe and --set arguments.")
        run_dir = RunDir.existing(Path(args.resume))
        recipe = load_recipe(str(run_dir.path / "config.yaml"))
    else:
        if not args.recipe:
            raise AnydistillError("give a recipe (a file or a shipped name; see `anydistill recipes`) or --resume RUN_DIR.")
        recipe = load_recipe(args.recipe, args.set)
        root = Path(args.runs)
        name = args.name or recipe.name
        # Lightning's own DDP launcher re-runs this command for ranks > 0 with our environment:
        # they take the name rank 0 chose. Under torchrun all ranks start at once and keep the
        # recipe's name (if it is taken, rank 0 stops and torchrun stops the others).
        if "ANYDISTILL_RUN_NAME" in os.environ:
            name = os.environ["ANYDISTILL_RUN_NAME"]
        elif args.name is None and "RANK" not in os.environ and "LOCAL_RANK" not in os.environ:
            name = free_name(root, name)
        run_dir = RunDir.create(root, name, is_main_process=is_main_process())
    # Set only for the run itself: an in-process caller (a test, a notebook) must not hand this
    # name on to the next run or to a child process it starts later.
    previous = os.environ.get("ANYDISTILL_RUN_NAME")
    os.environ["ANYDISTILL_RUN_NAME"] = run_dir.path.name
    try:
        metrics = run_recipe(recipe, run_dir, resume=bool(args.resume), command=" ".join(["anydistill", *args.argv]))
    finally:
        if previous is None:
            os.environ.pop("ANYDISTILL_RUN_NAME", None)
        else:
            os.environ["ANYDISTILL_RUN_NAME"] = previous
        _end_distributed()
    if is_main_process():
        from rich.console import Console

        # Piped output has no terminal width; rich would squeeze the table into 80 columns.
        table = console_table(metrics, title=f"{recipe.name}: test split", columns=recipe.evaluation.target.headline)
        Console(width=None if sys.stdout.isatty() else 140).print(table)
        print(f"Run directory: {run_dir.path}  (report: {run_dir.path / 'report.md'})")
    return 0


def _end_distributed() -> None:
    """Close the process group a DDP run opened (Lightning leaves it open): left to interpreter
    exit, gloo's threads are destroyed while joinable and a rank can abort (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def command_demo(args: argparse.Namespace) -> int:
    args.recipe, args.resume = DEMO_RECIPES[args.family], None
    return command_run(args)


def command_validate(args: argparse.Namespace) -> int:
    from anydistill.catalog import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    print(f"{recipe.source}: valid ({len(recipe.methods)} methods: {', '.join(recipe.methods)})")
    for missing in recipe.unchecked:  # the models and methods were not built: their checks wait for the run
        print(f"  not checked here (files absent; the run checks them): {missing}")
    return 0


def command_methods(args: argparse.Namespace) -> int:
    from anydistill.catalog import METHODS

    rows, broken = [], []
    for name in METHODS.names():
        try:
            cls = METHODS.get(name)
        except LookupError as error:  # an installed plugin that fails to import: list the rest, name it
            broken.append(str(error))
            continue
        rows.append({"name": name, "family": cls.family, "paper": cls.paper, "data": cls.data,
                     "served_teacher": cls.served_teacher, "several_teachers": cls.several_teachers, "parameters": _parameters(cls)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['name']:<20} {row['family']:<11} {row['data']:<17} {row['paper']}")
    if broken:
        raise AnydistillError("\n".join(broken))
    return 0


def _parameters(cls: type) -> dict[str, dict[str, str]]:
    """A method's recipe parameters for ``methods --json``: name -> {type, default}."""
    from anydistill.catalog import METHOD_INJECTED
    from anydistill.core.recipe import parameters_of

    try:
        fields = parameters_of(cls, METHOD_INJECTED)
    except (TypeError, ValueError, NameError):
        return {}
    return {name: {"type": _type_name(annotation), **({} if default is ... else {"default": repr(default)})}
            for name, (annotation, default) in fields.items()}


def _type_name(annotation: object) -> str:
    """``float >= 0`` for ``Annotated[float, Field(ge=0)]``; the plain name otherwise."""
    import typing

    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        bounds = [f"{symbol} {getattr(item, key)}" for extra in extras for item in getattr(extra, "metadata", [extra])
                  for key, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(item, key)]
        return " ".join([_type_name(base), ", ".join(bounds)]).strip()
    import types

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if annotation is type(None):
        return "none"
    name = getattr(annotation, "__name__", None)
    return name if name and not args else str(annotation).replace("typing.", "")


def command_recipes(args: argparse.Namespace) -> int:
    from anydistill.catalog import shipped_recipes

    for name, path in shipped_recipes().items():
        first = path.read_text().splitlines()[0].lstrip("# ").strip()
        print(f"{name:<28} {first}")
    return 0


def command_evaluate_synset(args: argparse.Namespace) -> int:
    from anydistill.catalog import DATA, EVALUATOR_INJECTED
    from anydistill.core.recipe import apply_override, validate_kwargs
    from anydistill.dataset.evaluate import SynsetEvaluator
    from anydistill.dataset.synset import SyntheticSet
    from anydistill.report import console_table

    synset, manifest = SyntheticSet.load(args.path)
    data_name = args.data or manifest.get("source", {}).get("data")
    if not data_name:
        raise AnydistillError(f"{args.path} does not record the data it was distilled from: pass --data NAME (e.g. --data mnist).")
    try:
        data_cls = DATA.get(data_name)
    except LookupError as error:
        raise AnydistillError(f"--data: {error}") from None
    if data_cls.missing_package():
        raise AnydistillError(data_cls.missing_package())
    datamodule = data_cls()
    datamodule.setup()
    recorded = manifest.get("source", {}).get("fingerprint")
    if recorded != datamodule.fingerprint("train") and not args.data:
        raise AnydistillError(
            f"{args.path} was distilled from other data than this '{data_name}' training split (fingerprint mismatch); "
            "pass --data NAME to evaluate it on a data module anyway."
        )
    settings: dict = {}
    problems = [p for p in (apply_override(settings, a) for a in args.set) if p]
    settings["baselines"] = [b for b in args.baselines.split(",") if b]
    values, found = validate_kwargs(SynsetEvaluator, settings, owner="the dataset evaluator", where="--set", injected=EVALUATOR_INJECTED)
    found = found or SynsetEvaluator.settings_problems(values)
    if problems or found:
        raise AnydistillError("\n".join(problems + found))
    evaluator = SynsetEvaluator(datamodule, {"ipc": synset.ipc}, data_name, **values)
    rows = {"synset": {**evaluator.evaluate(synset, None, manifest.get("method", "?")), "method": manifest.get("method")}}
    rows.update(evaluator.baselines(skip=set()))
    evaluator.summarise(rows)
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 140).print(console_table(rows, title=f"{args.path}: {data_name} {evaluator.score_split} split", columns=evaluator.headline))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "protocol": evaluator.card()}, indent=2) + "\n")
    return 0


def command_tune(args: argparse.Namespace) -> int:
    from anydistill.study.tune import tune

    try:
        result = tune(args.recipe, args.method, args.trials, storage=args.storage, study_name=args.study_name,
                      overrides=args.set, spaces=args.space, runs=args.runs)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue the study from its storage", file=sys.stderr)
        return 130
    value = "none" if result.best_value is None else f"{result.best_value:.4f}"
    print(f"Best validation score {value}: {' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in result.best_params.items())}")
    print(f"Study directory: {result.run_dir}  (best.yaml, trials.csv, plots/)")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from anydistill.core.rundir import RunDir
    from anydistill.report import write_report

    run_dir = RunDir.existing(Path(args.run_dir))
    print(f"Wrote {write_report(run_dir.path)}")
    return 0


def command_serve_teacher(args: argparse.Namespace) -> int:
    from anydistill.core.errors import RecipeError
    from anydistill.lm.served.client import read_token
    from anydistill.lm.served.protocol import SIGNALS
    from anydistill.lm.served.server import load_service, serve

    signals = tuple(s.strip() for s in args.signals.split(",") if s.strip())
    unknown = [s for s in signals if s not in SIGNALS]
    if unknown or not signals:
        raise RecipeError([f"--signals: {', '.join(unknown) or 'none given'}; choose among {', '.join(SIGNALS)} (comma-separated)."])
    token = read_token(args.token_file) if args.token_file else None
    try:
        service = load_service(args.teacher, name=args.name, max_tokens=args.max_tokens_per_request, max_logprobs=args.max_logprobs,
                               signals=signals, dtype=args.dtype, device=args.device)
    except ValueError as error:
        raise RecipeError([str(error)]) from None
    print(f"Serving {service.name} (fingerprint {service.fingerprint[:12]}, vocabulary {service.vocab}, signals {', '.join(signals)}) "
          f"on http://{args.host}:{args.port}  (Ctrl-C stops)", flush=True)
    serve(service, host=args.host, port=args.port, token=token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anydistill", description="Distill a teacher into a smaller, faster student.")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_run_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--runs", default="runs", help="root of run directories (default: runs)")

    demo = commands.add_parser(
        "demo", help="run a family's demo recipe: teacher, baseline and distilled student, in a few minutes on a CPU",
        description="classifier: pretrained MNIST teacher into a 32x smaller CNN (KD vs scratch); lm: Shakespeare GPT-2 "
                    "trained here into a 1-layer student (token KD vs SFT); diffusion: 2-D flow teacher trained here "
                    "into a 1-step generator (reflow vs the teacher at equal steps); dataset: 8x8 digits into 1 "
                    "image per class (DM vs random real images and herding). Each runs recipes/demo/<family>.yaml.")
    demo.add_argument("family", nargs="?", default="classifier", choices=DEMO_FAMILIES, help="which demo (default: classifier)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key, e.g. trainer.max_epochs=1")
    demo.add_argument("--name", help="run directory name (default: the recipe's name, suffixed if taken)")
    add_run_options(demo)
    demo.set_defaults(handler=command_demo)

    run = commands.add_parser("run", help="run a recipe (a YAML file or a shipped recipe name)")
    run.add_argument("recipe", nargs="?", help="recipe file, or a shipped name such as mnist/demo")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key, e.g. methods.kd.temperature=2")
    run.add_argument("--name", help="run directory name (default: the recipe's name, suffixed if taken)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoints")
    add_run_options(run)
    run.set_defaults(handler=command_run)

    validate = commands.add_parser("validate", help="check a recipe and report every problem")
    validate.add_argument("recipe")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(handler=command_validate)

    methods = commands.add_parser("methods", help="list the registered methods")
    methods.add_argument("--json", action="store_true", help="a JSON list of {name, family, paper, data, served_teacher, several_teachers, parameters}")
    methods.set_defaults(handler=command_methods)

    recipes = commands.add_parser("recipes", help="list the recipes shipped with anydistill")
    recipes.set_defaults(handler=command_recipes)

    evaluate = commands.add_parser("evaluate-synset", help="score a saved synthetic set with the standard protocol")
    evaluate.add_argument("path", help="a directory written by a dataset-distillation run (checkpoints/<label>)")
    evaluate.add_argument("--data", help="data module to test on (default: the one recorded in the set's manifest)")
    evaluate.add_argument("--baselines", default="", help="also measure these, comma-separated: random,herding,k-center,full-data")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="evaluator setting, e.g. epochs=300 num_models=3")
    evaluate.add_argument("--out", help="write the rows and the protocol card to this JSON file")
    evaluate.set_defaults(handler=command_evaluate_synset)

    tune_ = commands.add_parser("tune", help="choose one method's hyperparameters on the validation split (Optuna)")
    tune_.add_argument("recipe", help="recipe file, or a shipped name such as digits/all-methods")
    tune_.add_argument("--method", required=True, metavar="LABEL", help="the method to tune (a key of the recipe's methods)")
    tune_.add_argument("--trials", type=int, default=20, help="total finished trials the study should hold (default 20)")
    tune_.add_argument("--storage", help="Optuna storage URL (default sqlite:///RUNS/tune.db); a study there is continued")
    tune_.add_argument("--study-name", help="default: tune-<recipe name>-<method>")
    tune_.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key (fixes it if searched)")
    tune_.add_argument("--space", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                       help="narrow, add (also KEY=a,b,c) or drop (KEY=off) a searched parameter, e.g. temperature=1:8:log")
    add_run_options(tune_)
    tune_.set_defaults(handler=command_tune)

    served = commands.add_parser(
        "serve-teacher", help="serve a local teacher checkpoint over HTTP (vLLM's prompt_logprobs API + top-k/adaptive/hidden rows)",
        description="Serves the subset of vLLM's OpenAI-compatible API that distillation reads (/v1/models, /v1/completions with "
                    "prompt_logprobs) and a binary extension for top-k, adaptive-k and hidden-state rows. Point a recipe at it with "
                    "teacher: {server: http://HOST:PORT}. Binds 127.0.0.1 unless --host says otherwise.")
    served.add_argument("teacher", help="a save_pretrained folder of a causal LM (its tokenizer beside it fills decoded_token)")
    served.add_argument("--port", type=int, default=8000, help="default 8000")
    served.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only); another address logs a warning")
    served.add_argument("--name", help="the served model name (default: the folder's name)")
    served.add_argument("--signals", default="topk,adaptive,hidden", help="binary signals served, comma-separated (default: all three)")
    served.add_argument("--max-tokens-per-request", type=int, default=65536, help="larger requests get 413 (default 65536)")
    served.add_argument("--max-logprobs", type=int, default=64, help="the largest prompt_logprobs k (vLLM's --max-logprobs; default 64)")
    served.add_argument("--token-file", help="require Authorization: Bearer <the file's content>")
    served.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="the teacher's weights (default float32)")
    served.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1... (default cpu)")
    served.set_defaults(handler=command_serve_teacher)

    report = commands.add_parser("report", help="re-render report.md and plots of a run directory")
    report.add_argument("run_dir")
    report.set_defaults(handler=command_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # saved in run.json as the command that started the run
    try:
        return args.handler(args)
    except AnydistillError as error:
        return _print_problems(error)
    except KeyboardInterrupt:
        print("interrupted: resume with `anydistill run --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
