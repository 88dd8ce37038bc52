"""VM groups, as Nova's server groups: which hosts a group's rule allows, and
which it prefers.

A group is a name, a policy and its members (VM names). `affinity` and
`anti-affinity` are hard: a host that breaks them is ruled out, like a host
without room (`affinity`: once a member is placed, only the hosts holding
members; `anti-affinity`: no host holding one). `soft-affinity` and
`soft-anti-affinity` only rank: among the hosts that fit, those holding the
most (the fewest) members come first, and the policy's score orders the hosts
within each count. The rule of one host is `host_refusal`, the one check both
`Cluster.choose` (every host at once, from its picture) and the controller's
reservation (one host, under its lock, from the database) apply.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pinfold.placement.errors import Refusal, RefusalCode

__all__ = ["GroupPolicy", "GroupRule", "host_refusal"]


class GroupPolicy(StrEnum):
    """Nova's server group policies (their wire strings)."""

    AFFINITY = "affinity"
    ANTI_AFFINITY = "anti-affinity"
    SOFT_AFFINITY = "soft-affinity"
    SOFT_ANTI_AFFINITY = "soft-anti-affinity"

    @property
    def hard(self) -> bool:
        """Whether a host that breaks the rule is ruled out (else only ranked lower)."""
        return self in (GroupPolicy.AFFINITY, GroupPolicy.ANTI_AFFINITY)

    @property
    def together(self) -> bool:
        """Whether the members are to share hosts (affinity, soft or hard)."""
        return self in (GroupPolicy.AFFINITY, GroupPolicy.SOFT_AFFINITY)


@dataclass(frozen=True, slots=True)
class GroupRule:
    """A group as one placement sees it: its `members` are the VMs placed (or
    reserved) in it so far; the VM being placed is not counted among them."""

    name: str
    policy: GroupPolicy
    members: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        """ "web (anti-affinity)": how refusals and explanations name the group."""
        return f"{self.name} ({self.policy.value})"

    def refusal(self) -> Refusal:
        """What a host the rule rules out answers (the same for every such host,
        so that an explanation counts them together)."""
        return Refusal(RefusalCode.GROUP_POLICY, detail=self.label)

    def with_member(self, name: str) -> GroupRule:
        """The rule once `name` is placed too (the next VM of a bulk create sees it)."""
        return GroupRule(self.name, self.policy, self.members | {name})


def host_refusal(rule: GroupRule, host: str, member_hosts: Mapping[str, str | None]) -> Refusal | None:
    """Whether `host` may take a new member of `rule`'s group, given where its
    members are (`member_hosts`: name -> host, None for a member on no host):
    the group refusal, or None. Soft policies never refuse."""
    if not rule.policy.hard:
        return None
    holding: Collection[str] = {h for h in member_hosts.values() if h is not None}
    if rule.policy is GroupPolicy.ANTI_AFFINITY:
        return rule.refusal() if host in holding else None
    return rule.refusal() if holding and host not in holding else None
