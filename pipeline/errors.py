"""The one error tree of voip-pipeline.

Every error a user can cause is a `PipelineError`; messages start with their subject
("RTP packet has truncated CSRC list") so that one line says what went wrong and where.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error this project raises on purpose.

    `hint` says how to fix it; `str()` gives the one line the CLI prints.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class GraphError(PipelineError, ValueError):
    """A graph description is wrong; carries the place in the YAML (file:line:column)."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.file = file
        self.line = line
        self.column = column

    @property
    def where(self) -> str:
        parts = [p for p in (self.file, self.line, self.column) if p is not None]
        return ":".join(str(p) for p in parts)

    def __str__(self) -> str:
        text = super().__str__()
        return f"{self.where}: {text}" if self.where else text


class NegotiationError(GraphError):
    """Two linked ports cannot agree on a format; the message names both ports and formats.

    A GraphError too, so it carries the place of the link in the YAML.
    """


class PluginError(PipelineError):
    """A plugin failed to load, or two plugins register the same name."""


class NodeError(PipelineError):
    """A node failed at run time; `node` names it."""

    def __init__(self, message: str, *, node: str | None = None, hint: str | None = None,
                 where: str | None = None):
        super().__init__(message, hint=hint)
        self.node = node
        # The node's place in its YAML file (file:line:column), where known: the CLI's line
        # starts with it, as a load error's does (str() leaves it out: the node says which).
        self.where = where

    def __str__(self) -> str:
        text = super().__str__()
        return f"node '{self.node}': {text}" if self.node else text


class ProtocolError(PipelineError):
    """A protocol (SIP, SDP, RTP, RTCP) went wrong."""


class ParseError(ProtocolError, ValueError):
    """Bad input from the remote side; network nodes count and drop it."""


class LocalProtocolError(ProtocolError):
    """We misused a protocol (a bug or a bad call on our side)."""


class MissingDependencyError(PipelineError, ImportError):
    """A library or device a node needs is not installed; the hint says what to install."""
