"""Who may administer whom, and what a login leads to (second factor, forced change, enforced enrolment)."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from auth.domain import Next, may_administer, may_assign, next_step, restricted_scope
from shared.tokens import Role, Scope

roles = st.sampled_from(list(Role))
orgs = st.sampled_from([uuid.UUID(int=1), uuid.UUID(int=2), None])
people = st.sampled_from([uuid.UUID(int=10), uuid.UUID(int=11)])
REQUIRED = frozenset({Role.ORG_ADMIN, Role.DOCTOR})


@given(roles, orgs, people, roles, orgs, people)
def test_an_org_admin_administers_only_its_own_organisations_users(actor_role: Role, actor_org: object,
                                                                    actor: uuid.UUID, target_role: Role,
                                                                    target_org: object, target: uuid.UUID) -> None:
    allowed = may_administer(actor_role=actor_role, actor_org=actor_org, actor_id=actor,  # type: ignore[arg-type]
                             target_role=target_role, target_org=target_org, target_id=target)  # type: ignore[arg-type]
    if allowed and actor_role is Role.ORG_ADMIN:
        assert target_org == actor_org and target_org is not None and target_role is not Role.PLATFORM_ADMIN
    if allowed:
        assert actor != target and actor_role in (Role.ORG_ADMIN, Role.PLATFORM_ADMIN)


@given(orgs, roles, orgs)
def test_a_platform_admin_administers_organisation_admins_only(actor_org: object, target_role: Role,
                                                               target_org: object) -> None:
    allowed = may_administer(actor_role=Role.PLATFORM_ADMIN, actor_org=None, actor_id=uuid.UUID(int=10),
                             target_role=target_role, target_org=target_org,  # type: ignore[arg-type]
                             target_id=uuid.UUID(int=11))
    assert allowed == (target_role is Role.ORG_ADMIN and target_org is not None)


@given(roles, roles)
def test_nobody_grants_platform_admin_and_only_admins_assign_roles(actor: Role, new: Role) -> None:
    if may_assign(actor_role=actor, new_role=new):
        assert new is not Role.PLATFORM_ADMIN and actor in (Role.ORG_ADMIN, Role.PLATFORM_ADMIN)


@given(st.booleans(), st.booleans(), st.booleans(), roles)
def test_a_full_session_needs_every_enrolled_factor_a_changed_password_and_required_mfa(
    enabled: bool, done: bool, must_change: bool, role: Role
) -> None:
    step = next_step(mfa_enabled=enabled, mfa_done=done, must_change_password=must_change, role=role,
                     mfa_required_roles=REQUIRED)
    if step is Next.AUTHENTICATED:
        assert (not enabled or done) and not must_change and (role not in REQUIRED or enabled)
    if enabled and not done:
        assert step is Next.MFA


def test_restricted_tokens_exist_for_the_password_change_and_the_enrolment_only() -> None:
    assert restricted_scope(Next.PASSWORD_CHANGE) is Scope.PASSWORD_CHANGE
    assert restricted_scope(Next.MFA_ENROLMENT) is Scope.MFA_ENROLMENT
    assert restricted_scope(Next.AUTHENTICATED) is None and restricted_scope(Next.MFA) is None
