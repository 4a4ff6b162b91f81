"""Vocabulary checks between a student, a teacher and the tokenizer, made when a method starts.

The most common failure of LM distillation tools is a silent vocabulary mismatch (TRL #2215,
#3028, #4562; torchtune #2119): logits of different widths stacked, or a teacher fed ids of
another tokenizer. Here the rule is explicit:

* equal output widths: nothing to do;
* models of the same family (``config.model_type``) whose widths differ only by padding (both
  cover the tokenizer): both logits are sliced to the shared prefix ``[:V_shared]``, and a
  warning says so once;
* anything else: one error line naming the options (the cross-tokenizer methods ``uld`` and
  ``gold`` among them, which never compare logits id by id).
"""

from __future__ import annotations

import warnings

from torch import nn


def output_width(model: nn.Module) -> int:
    """Number of logits per position (``get_output_embeddings().out_features``, or ``config.vocab_size``)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and hasattr(head, "out_features"):
        return int(head.out_features)
    return int(model.config.vocab_size)


def check_vocab(student: nn.Module, teacher: nn.Module | None, tokenizer) -> int:
    """The number of leading logits the losses compare: ``V_shared``.

    Args:
        student, teacher: transformers causal LMs (teacher may be None: then only the tokenizer is checked).
        tokenizer: the tokenizer of the data (``len(tokenizer)`` ids, ``pad_token_id``, ``eos_token_id``).

    Raises:
        ValueError: one line naming the fix (a model narrower than the tokenizer, special ids that
            disagree, or teacher and student vocabularies of different families or sizes).
    """
    size = len(tokenizer)
    roles = [("student", student)] + ([("teacher", teacher)] if teacher is not None else [])
    for role, model in roles:
        width = output_width(model)
        if width < size:
            # A teacher trained with another tokenizer is the cross-tokenizer methods' case: say so.
            other = (" (a teacher with its own tokenizer: method 'uld' or 'gold' with paired data, data.teacher_tokenizer)"
                     if role == "teacher" else "")
            raise ValueError(
                f"The {role}'s vocabulary ({width} logits) is smaller than the tokenizer's {size} ids: "
                f"set {role}.vocab_size >= {size} in the recipe, or use the tokenizer the {role} was trained with{other}."
            )
        config = model.config
        for name, want in (("eos_token_id", tokenizer.eos_token_id), ("pad_token_id", tokenizer.pad_token_id)):
            got = getattr(config, name, None)
            if got is not None and want is not None and got != want:
                raise ValueError(
                    f"The {role}'s config.{name} is {got} but the tokenizer's is {want}: the {role} was built for "
                    "another tokenizer; rebuild it with this tokenizer's special ids or use its own tokenizer."
                )
    if teacher is None:
        return output_width(student)
    v_student, v_teacher = output_width(student), output_width(teacher)
    if v_student == v_teacher:
        return v_student
    same_family = getattr(student.config, "model_type", None) == getattr(teacher.config, "model_type", None)
    if not same_family:
        raise ValueError(
            f"The student ({student.config.model_type}, {v_student} logits) and the teacher ({teacher.config.model_type}, "
            f"{v_teacher} logits) have different vocabularies: give both the same vocab_size and tokenizer, use models "
            "of one family whose vocabularies differ only by padding, or, for a teacher with its own tokenizer, a cross-tokenizer "
            "method ('uld' or 'gold') with paired data (data.name: shakespeare-paired or lm-dataset-paired, data.teacher_tokenizer)."
        )
    shared = min(v_student, v_teacher)
    warnings.warn(
        f"Student and teacher vocabularies differ only by padding ({v_student} vs {v_teacher} logits, tokenizer {size} ids): "
        f"the distillation losses compare the shared first {shared} logits.",
        stacklevel=2,
    )
    return shared
