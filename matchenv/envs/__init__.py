"""Gymnasium environments of matchenv."""

from matchenv.envs.actions import ACTION_TYPES, DISCRETE_ACTION_NAMES
from matchenv.envs.template_search import OBS_MODES, REWARD_MODES, TemplateSearchEnv

__all__ = ["ACTION_TYPES", "DISCRETE_ACTION_NAMES", "OBS_MODES", "REWARD_MODES", "TemplateSearchEnv"]
