"""Linking a device by a scanned code (issue 13) through the generated
Python bindings only, against the real relay and keyserver of `ward up`:
the phone shows a code, the tablet scans it, both show the same digits,
the phone decides."""

import asyncio
import re
import time

import pytest

import ward_ffi
from ward_ffi import WardError, WardEvent
from conftest import PIN
from test_bindings import HANG_GUARD_S, enroll_pair, is_sent, next_matching


def guard(aw):
    """A hang fails the test instead of blocking the suite."""
    return asyncio.wait_for(aw, HANG_GUARD_S)


async def scan(offer, servers, store):
    """The phone waits for a device while the tablet links from the code,
    concurrently as on two screens: (the phone's request, the tablet)."""
    return await guard(asyncio.gather(
        offer.wait_for_device(),
        ward_ffi.link_device_from_code(servers.config(store), offer.code(), PIN)))


def test_scanned_code_links_a_tablet_with_history(servers, tmp):
    async def scenario():
        phone, nurse = await enroll_pair(servers, tmp, "dr.link", "nurse.link")
        before = "Bed 4: troponin rising, cardiology paged"
        sent = await phone.send_text_to_user("nurse.link", before)
        await next_matching(phone, is_sent(sent))
        got = (await next_matching(nurse, lambda ev: isinstance(ev, WardEvent.MESSAGE))).message
        assert got.text == before
        conversation = got.conversation_id

        offer = await phone.link_device()
        code = offer.code()
        assert code.startswith("ward-link:1:") and code.endswith(":dr.link")
        assert offer.expires_at() > time.time()
        request, tablet = await scan(offer, servers, tmp / "tablet.db")
        assert re.fullmatch(r"\d{3} \d{3}", request.sas())
        assert tablet.sas() == request.sas(), "both screens show the same digits"
        assert len(request.device_id()) == 64

        # The phone approves with its history while the tablet finishes.
        count, tablet_client = await guard(asyncio.gather(
            request.approve(True), tablet.finish()))
        assert count == 1, "the whole history: one message"
        assert tablet_client.user_id() == "dr.link"
        assert tablet_client.device_id() == request.device_id()
        assert tablet_client.device_id() != phone.device_id()
        # The tablet holds the phone's history, as sent.
        [m] = await tablet_client.history(conversation)
        assert m.text == before and m.resource_id == sent
        assert m.sender_device == phone.device_id()
        # Both devices are the user's, in its verified log.
        devices = {d.device_id: d.active for d in await phone.devices()}
        assert devices == {phone.device_id(): True, tablet_client.device_id(): True}

        # A step runs once: a typed error, not a crash.
        with pytest.raises(WardError.LinkAlreadyUsed):
            await request.approve(True)
        with pytest.raises(WardError.LinkAlreadyUsed):
            await tablet.finish()
        with pytest.raises(WardError.LinkAlreadyUsed):
            await offer.wait_for_device()

        # The tablet receives what is sent to the user from now on.
        after = "Tablet: bed 4 transferred to CCU"
        await nurse.send_text_to_user("dr.link", after)
        new = (await next_matching(
            tablet_client, lambda ev: isinstance(ev, WardEvent.MESSAGE) and ev.message.text == after)).message
        assert new.sender_user_id == "nurse.link" and new.conversation_id == conversation

        # The code was used: the relay knows it no more.
        with pytest.raises(WardError.NoSuchLink):
            await guard(ward_ffi.link_device_from_code(
                servers.config(tmp / "again.db"), code, PIN))
        for c in (phone, nurse, tablet_client):
            await c.lock()

    asyncio.run(scenario())


def test_refused_link_and_bogus_code(servers, tmp):
    async def scenario():
        phone = await ward_ffi.enroll_with_invite_file(
            servers.config(tmp / "phone.db"), str(servers.invite("dr.refuse", "Refuse")), PIN)
        offer = await phone.link_device()
        request, tablet = await scan(offer, servers, tmp / "stranger.db")

        # The digits differed: the phone refuses, the tablet is told.
        finishing = asyncio.ensure_future(tablet.finish())
        await guard(request.refuse())
        with pytest.raises(WardError.LinkRefused):
            await guard(finishing)
        assert not (tmp / "stranger.db").exists(), "the refused device's store is wiped"
        assert [d.device_id for d in await phone.devices()] == [phone.device_id()]
        with pytest.raises(WardError.LinkAlreadyUsed):
            await request.approve(False)

        # Text that is not a link code: refused before anything is created.
        for bogus in ("https://example.org/not-a-code", "ward-link:1:zz:dr.refuse", ""):
            with pytest.raises(WardError.BadLinkCode):
                await ward_ffi.link_device_from_code(servers.config(tmp / "bogus.db"), bogus, PIN)
        assert not (tmp / "bogus.db").exists()
        await phone.lock()

    asyncio.run(scenario())
