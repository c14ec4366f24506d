"""Where text records hold their text (data/formats/text.py reads them), as the options give it:
kept apart from the layouts so that the options and the command line need no TensorFlow."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from distft.errors import DistftError


@dataclass(frozen=True)
class TextOptions:
    """Where a record's text is: `text`, or `prompt` and `response` (both given, or neither);
    `sequence_length` overrides the preprocessor's."""

    text: str = "text"
    prompt: Optional[str] = None
    response: Optional[str] = None
    sequence_length: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.prompt is None) != (self.response is None):
            raise DistftError("--prompt_key and --response_key go together: pass both, or neither "
                              "to train on whole texts (--text_key)")

    @classmethod
    def of(cls, names: list, sequence_length: Optional[int] = None) -> TextOptions:
        """The options whose `names` are these: a text's field, or a prompt's and a response's."""
        if len(names) == 1:
            return cls(names[0], sequence_length=sequence_length)
        return cls(prompt=names[0], response=names[1], sequence_length=sequence_length)

    @property
    def paired(self) -> bool:
        return self.prompt is not None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.prompt, self.response) if self.paired else (self.text,)

    def flags(self) -> str:
        return "--prompt_key/--response_key" if self.paired else "--text_key"
