"""Recipes: chains of stages (train, distill, prune, factorize, quantize, export, bench, score) run
by one runner, resumably, with fan-out branches and one final report. See effdl.recipes.spec for
the file format, effdl.recipes.stages for the stage kinds, effdl.recipes.plan for what is checked
before anything runs and effdl.recipes.runner for how stages run and resume."""

from effdl.recipes.plan import Plan, make_plan
from effdl.recipes.runner import RecipeResult, describe_plan, run_recipe
from effdl.recipes.spec import Recipe, StageSpec, load_recipe, recipe_from_text, shipped_recipes
from effdl.recipes.stages import STAGES, StageKind, register_stage

__all__ = ["Plan", "Recipe", "RecipeResult", "STAGES", "StageKind", "StageSpec", "describe_plan", "load_recipe",
           "make_plan", "recipe_from_text", "register_stage", "run_recipe", "shipped_recipes"]
