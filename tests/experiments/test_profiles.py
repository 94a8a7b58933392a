"""Every section's configuration is reached through one lookup, which knows one alias and names the known profiles."""

from dataclasses import asdict, fields

import pytest

from kadam import vocabulary
from kadam.experiments.profiles import ALIASES, PROFILE_SIZES, ProfileSizes, Settings, profile_sizes
from kadam.experiments.registry import SECTIONS, section_builder
from kadam.experiments.stability.protocol import TrainingSizes


def test_the_table_has_every_profile_and_every_section():
    assert tuple(PROFILE_SIZES) == vocabulary.PROFILES
    assert tuple(field.name for field in fields(ProfileSizes)) == SECTIONS


def test_study_is_the_one_alias_and_is_full():
    assert dict(ALIASES) == {"study": "full"}
    from kadam.experiments.comparison.confirmatory import STUDIES  # comparison-only profiles

    assert set(vocabulary.COMPARE_PROFILES) <= set(PROFILE_SIZES) | set(ALIASES) | set(STUDIES)
    assert profile_sizes("study") is profile_sizes("full")


@pytest.mark.parametrize("section", SECTIONS)
def test_every_section_rejects_an_unknown_profile_by_naming_the_known_ones(section):
    with pytest.raises(ValueError, match=r"profile must be one of smoke, quick, full, study \(= full\), got 'huge'"):
        section_builder(section)(Settings(profile="huge", device="cpu", seeds=None))


def test_the_training_protocol_sizes_are_training_sizes_defaults():
    assert dict(profile_sizes("quick").stability.protocol_sizes) == asdict(TrainingSizes())
    assert dict(profile_sizes("full").stability.protocol_sizes) == asdict(TrainingSizes())
    assert dict(profile_sizes("smoke").stability.protocol_sizes) == asdict(TrainingSizes(steps=150))
