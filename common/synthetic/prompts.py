"""OmniRef-style prompt text for a synthetic case.

References are called by number ("reference image 3", or "image 3", one wording per case), every
reference number appears exactly once, subject clauses name the subject and its slot, and the
clause order is shuffled. Subject names carry no digits, so the numbers in the text are exactly the
reference numbers.
"""
from __future__ import annotations

import numpy as np

__all__ = ["build_prompt"]

_SUBJECT = ("{name} in {ref} at the {slot}", "put {name} from {ref} at the {slot}",
            "place {name} shown in {ref} at the {slot}", "{name} ({ref}) sits at the {slot}")
_BACKGROUND = ("Set against the background from {ref}.", "Use the scene of {ref} as the background.",
               "The scene is set against the backdrop shown in {ref}.")
_STYLE = ("The overall visual and artistic style of the generated image should resemble the style of {ref}.",
          "Render everything stylistically resembling {ref}.", "With visual aesthetics matching {ref}.")
_LIGHTING = ("With lighting matching {ref}.", "Light the scene like {ref}.",
             "The lighting should follow {ref}.")
_POSE = ("{The} adopts the pose from {ref}.", "{The} takes the body position shown in {ref}.",
         "Make {the} follow the skeleton in {ref}.")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _the(name: str) -> str:
    return "the " + name.split(" ", 1)[1]


def build_prompt(rng: np.random.Generator, subjects, order, pose_subject: int | None) -> str:
    """subjects: SubjectSpecs; order[i] = (role, k) is reference i + 1; pose_subject: index or None."""
    word = ("reference image", "image")[rng.integers(2)]
    ref = {entry: f"{word} {i + 1}" for i, entry in enumerate(order)}
    joined = len(subjects) > 1 and rng.random() < 0.5   # all subjects in one sentence "A, B and C."
    subject_phrases, clauses = [], []
    for i, s in enumerate(subjects):
        t = _SUBJECT[0 if joined else rng.integers(len(_SUBJECT))]
        subject_phrases.append(t.format(name=s.name, ref=ref[("subject", i)], slot=s.slot))
    for role, templates in (("background", _BACKGROUND), ("style", _STYLE), ("lighting", _LIGHTING)):
        if (role, 0) in ref:
            clauses.append(templates[rng.integers(len(templates))].format(ref=ref[(role, 0)]))
    if ("pose", 0) in ref:
        the = _the(subjects[pose_subject].name)
        t = _POSE[rng.integers(len(_POSE))]
        clauses.append(_cap(t.format(The=the, the=the, ref=ref[("pose", 0)])))
    subject_phrases = [subject_phrases[i] for i in rng.permutation(len(subject_phrases))]
    if joined:
        clauses.append(_cap(", ".join(subject_phrases[:-1]) + " and " + subject_phrases[-1]) + ".")
    else:
        clauses += [_cap(p) + "." for p in subject_phrases]
    return " ".join(clauses[i] for i in rng.permutation(len(clauses)))
