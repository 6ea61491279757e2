"""Webhooks service, endpoints: create, read, list, update, delete, rotate the secret."""

from __future__ import annotations

import datetime as dt
import uuid

from domains.shared import idempotency
from domains.shared.clock import utcnow
from domains.shared.errors import InvalidArgument
from domains.shared.ids import new_id
from domains.shared.ssrf import UnsafeUrl
from domains.webhooks import signing
from domains.webhooks.model import MAX_DESCRIPTION, Endpoint, validate_event_types
from domains.webhooks.service.base import UNSET, Page, ServiceBase, _page


class EndpointsPart(ServiceBase):
    """Endpoint use cases of the webhooks service."""

    async def _check_url(self, url: str) -> None:
        try:
            await self.guard.check(url)
        except UnsafeUrl as exc:
            exc.metadata.setdefault("field", "url")
            raise

    @staticmethod
    def _check_fields(description: str | None, rate_limit: float | None) -> None:
        if description is not None and "\x00" in description:
            raise InvalidArgument(
                "description must not contain NUL characters", metadata={"field": "description"}
            )
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise InvalidArgument(
                f"description must be at most {MAX_DESCRIPTION} characters",
                metadata={"field": "description"},
            )
        if rate_limit is not None and not (0 < rate_limit <= 10000):
            raise InvalidArgument(
                "rate_limit must be between 0 (exclusive) and 10000 requests per second,"
                " or null for no limit",
                metadata={"field": "rate_limit"},
            )

    async def create_endpoint(
        self,
        tenant: str,
        *,
        url: str,
        event_types: list[str],
        description: str = "",
        enabled: bool = True,
        rate_limit: float | None = None,
        request_id: str | None = None,
    ) -> tuple[Endpoint, str]:
        """Creates an endpoint with a new signing secret (once per AIP-155 ``request_id``).

        Args:
            tenant: Owner.
            url: http(s) URL; its host must resolve to public addresses (or be allowlisted).
            event_types: Patterns of event types it receives.
            description: Free text.
            enabled: Whether deliveries are sent.
            rate_limit: Requests per second, ``None`` for no limit.
            request_id: AIP-155 request id: a retry with the same body returns the endpoint
                the first call created, with its current secret (the first answer, which
                carried the secret, may have been lost; the caller could rotate it anyway).

        Returns:
            The endpoint and its secret in clear (shown on create only).

        Raises:
            InvalidArgument: A bad field, or an unsafe URL (``UNSAFE_URL``).
            AlreadyExists: If ``request_id`` was used with a different body.
        """
        idempotency.check_request_id(request_id)
        patterns = validate_event_types(event_types)
        self._check_fields(description, rate_limit)
        await self._check_url(url)
        fingerprint = idempotency.request_fingerprint(
            {
                "url": url,
                "event_types": list(event_types),
                "description": description,
                "enabled": enabled,
                "rate_limit": rate_limit,
            }
        )
        secret = signing.new_secret()
        now = utcnow()
        endpoint = Endpoint(
            id=new_id(),
            tenant=tenant,
            url=url,
            description=description,
            event_types=patterns,
            enabled=enabled,
            disabled_reason=None if enabled else "created disabled",
            secret=self._box.seal(secret),
            rate_limit=rate_limit,
            create_time=now,
            update_time=now,
            request_id=request_id,
            request_hash=fingerprint if request_id else None,
        )
        async with self._uow() as uow:
            if await uow.webhooks.add_endpoint(endpoint):
                await uow.commit()
                return endpoint, secret
        # The request id is taken (a retry, or a concurrent twin that committed first).
        async with self._uow() as uow:
            first = await uow.webhooks.get_endpoint_by_request_id(tenant, str(request_id))
        if first is None:  # pragma: no cover - the first one was deleted in between
            raise idempotency.vanished(str(request_id))
        idempotency.ensure_same_request(
            request_id=str(request_id),
            resource=first.name,
            stored_hash=first.request_hash,
            request_hash=fingerprint,
        )
        return first, self._box.open(first.secret)

    async def list_endpoints(
        self, tenant: str, *, page_size: int, after_id: uuid.UUID | None
    ) -> Page:
        """Lists a tenant's endpoints in creation order.

        Args:
            tenant: Caller's tenant.
            page_size: Page size.
            after_id: Keyset position.

        Returns:
            The page.
        """
        async with self._read_uow() as uow:
            found = await uow.webhooks.list_endpoints(
                tenant, after_id=after_id, limit=page_size + 1
            )
        return _page(found, page_size)

    async def update_endpoint(
        self,
        tenant: str,
        endpoint_id: uuid.UUID,
        *,
        url: str | None = None,
        description: str | None = None,
        event_types: list[str] | None = None,
        enabled: bool | None = None,
        rate_limit: float | None = UNSET,
        correlation_id: str | None = None,
    ) -> Endpoint:
        """Changes an endpoint; enabling it again resumes its paused deliveries.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Endpoint id.
            url: New URL (checked by the SSRF guard).
            description: New description.
            event_types: New patterns.
            enabled: Enable or disable.
            rate_limit: New limit (``None`` removes it; leave unset to keep it).
            correlation_id: Request id for logs.

        Returns:
            The endpoint.

        Raises:
            NotFound: If it does not exist for this tenant.
            InvalidArgument: A bad field or an unsafe URL.
        """
        patterns = validate_event_types(event_types) if event_types is not None else None
        self._check_fields(description, None if rate_limit is UNSET else rate_limit)
        if url is not None:
            await self._check_url(url)
        async with self._uow() as uow:
            endpoint = await uow.webhooks.get_endpoint(endpoint_id, tenant=tenant, for_update=True)
            if endpoint is None:
                raise self._endpoint_not_found(endpoint_id)
            now = utcnow()
            if url is not None:
                endpoint.url = url
            if description is not None:
                endpoint.description = description
            if patterns is not None:
                endpoint.event_types = patterns
            if rate_limit is not UNSET:
                endpoint.rate_limit = rate_limit
            resume = False
            if enabled is True and not endpoint.enabled:
                endpoint.enable(now)
                resume = True
            elif enabled is False and endpoint.enabled:
                endpoint.enabled = False
                endpoint.disabled_reason = "disabled by an operator"
            endpoint.update_time = now
            await uow.webhooks.save_endpoint(endpoint)
            if resume:
                await self._resume_paused(uow, endpoint.id, now, correlation_id)
            await uow.commit()
        return endpoint

    async def delete_endpoint(self, tenant: str, endpoint_id: uuid.UUID) -> None:
        """Deletes an endpoint with its deliveries and attempts.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Endpoint id.

        Raises:
            NotFound: If it does not exist for this tenant.
        """
        async with self._uow() as uow:
            endpoint = await uow.webhooks.get_endpoint(endpoint_id, tenant=tenant, for_update=True)
            if endpoint is None:
                raise self._endpoint_not_found(endpoint_id)
            await uow.webhooks.delete_endpoint(endpoint_id)
            await uow.commit()

    async def rotate_secret(self, tenant: str, endpoint_id: uuid.UUID) -> tuple[Endpoint, str]:
        """Gives an endpoint a new secret; the old one keeps signing during the grace period.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Endpoint id.

        Returns:
            The endpoint and the new secret in clear (shown once).

        Raises:
            NotFound: If it does not exist for this tenant.
        """
        secret = signing.new_secret()
        async with self._uow() as uow:
            endpoint = await uow.webhooks.get_endpoint(endpoint_id, tenant=tenant, for_update=True)
            if endpoint is None:
                raise self._endpoint_not_found(endpoint_id)
            endpoint.rotate(
                self._box.seal(secret),
                utcnow(),
                dt.timedelta(seconds=self.config.secret_grace_seconds),
            )
            await uow.webhooks.save_endpoint(endpoint)
            await uow.commit()
        return endpoint, secret
