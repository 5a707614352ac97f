"""Ward through its generated Python bindings only (ward_ffi), against the
real relay and keyserver of `ward up`: what a Kotlin or Swift app sees."""

import asyncio
import os
import threading

import pytest

import ward_ffi
from ward_ffi import WardError, WardEvent
from conftest import PIN

# A guard against a hang, not a timing assertion: a missing event fails
# the test instead of blocking the suite.
HANG_GUARD_S = 120


async def next_matching(client, pred):
    """Reads `client`'s events until one satisfies `pred`; returns it."""
    while True:
        ev = await asyncio.wait_for(client.next_event(), HANG_GUARD_S)
        assert ev is not None, "the event stream closed"
        if pred(ev):
            return ev


def is_message(ev):
    return isinstance(ev, WardEvent.MESSAGE)


def is_sent(resource_id):
    return lambda ev: isinstance(ev, WardEvent.SENT) and ev.resource_id == resource_id


def invite_bytes(path):
    """The two hex lines of an invite file, as bytes (the other way in)."""
    lines = dict(
        l.strip().split(None, 1) for l in open(path) if l.strip().startswith(("invite:", "delegation:")))
    return bytes.fromhex(lines["invite:"]), bytes.fromhex(lines["delegation:"])


async def enroll_pair(servers, tmp, a, b):
    alice = await ward_ffi.enroll_with_invite_file(
        servers.config(tmp / f"{a}.db"), str(servers.invite(a, a.title())), PIN)
    invite, delegation = invite_bytes(servers.invite(b, b.title()))
    bob = await ward_ffi.enroll(servers.config(tmp / f"{b}.db"), invite, delegation, PIN)
    return alice, bob


def test_enroll_wrong_pin_then_right_send_and_receive(servers, tmp):
    async def scenario():
        alice, bob = await enroll_pair(servers, tmp, "dr.martin", "nurse.dubois")
        assert alice.user_id() == "dr.martin" and bob.user_id() == "nurse.dubois"
        assert len(alice.device_id()) == 64
        # A push token: bytes, at most 1,024 (the relay of `ward up` stores
        # it; no gateway is configured there).
        await bob.register_push(bytes.fromhex("a1b2c3"))
        with pytest.raises(WardError.Invalid):
            await bob.register_push(bytes(1025))

        # Locked, then a wrong PIN: the typed exception, with the count.
        await alice.lock()
        with pytest.raises(WardError.Closed):
            await alice.conversations()
        config = servers.config(tmp / "dr.martin.db")
        with pytest.raises(WardError.WrongPin) as wrong:
            await ward_ffi.unlock(config, "not-the-pin-000")
        assert wrong.value.attempts_left == 9
        with pytest.raises(WardError.InvalidPin):
            await ward_ffi.unlock(config, "123")
        alice = await ward_ffi.unlock(config, PIN)

        sent = await alice.send_text_to_user("nurse.dubois", "Bed 12: K+ 6.1, please review")
        ev = await next_matching(bob, is_message)
        m = ev.message
        assert m.text == "Bed 12: K+ 6.1, please review"
        assert m.sender_user_id == "dr.martin"
        assert m.sender_device == alice.device_id()
        assert m.resource_id == sent
        assert m.kind == ward_ffi.MessageKind.TEXT and m.attachment is None
        await next_matching(alice, is_sent(sent))

        # The same conversation both ways, and in both histories.
        reply = await bob.send_text_to_user("dr.martin", "On my way")
        back = (await next_matching(alice, is_message)).message
        assert back.text == "On my way" and back.resource_id == reply
        assert back.conversation_id == m.conversation_id
        for c in (alice, bob):
            texts = [h.text for h in await c.history(m.conversation_id)]
            assert texts == ["Bed 12: K+ 6.1, please review", "On my way"]
        assert [c.members for c in await alice.conversations()] == [["dr.martin", "nurse.dubois"]]

        with pytest.raises(WardError.NotFound):
            await alice.send_text_to_user("dr.nobody", "hello")
        with pytest.raises(WardError.Invalid):
            await alice.send_text("not-hex", "hello")
        await alice.lock()
        await bob.lock()
        # Events already queued are still read; then the stream ends.
        while await asyncio.wait_for(bob.next_event(), HANG_GUARD_S) is not None:
            pass

    asyncio.run(scenario())


def test_platform_unlock(servers, tmp):
    """Biometric unlock: the keystore's 32-byte secret instead of the PIN while
    the slot is valid (SECURITY.md §14.10); every refusal says: ask for the PIN."""
    async def scenario():
        store = tmp / "dr.bio.db"
        config = servers.config(store)
        # The PIN is set at enrolment, as always.
        c = await ward_ffi.enroll_with_invite_file(config, str(servers.invite("dr.bio", "Bio")), PIN)
        secret, wrong = bytes(range(32)), bytes(32)
        with pytest.raises(WardError.Invalid):
            await c.enable_platform_unlock(secret[:31], 3600)
        with pytest.raises(WardError.Invalid):
            await c.enable_platform_unlock(secret, 0)
        await c.enable_platform_unlock(secret, 12 * 3600)
        device = c.device_id()
        await c.lock()

        # No PIN: the same device, its store open.
        c = await ward_ffi.unlock_with_platform_secret(config, secret)
        assert c.device_id() == device and c.user_id() == "dr.bio"
        await c.conversations()
        await c.lock()

        # Three wrong secrets: counted, then the slot is gone.
        for left in (2, 1):
            with pytest.raises(WardError.PinRequired) as e:
                await ward_ffi.unlock_with_platform_secret(config, wrong)
            assert e.value.reason == ward_ffi.PinRequiredReason.WRONG_SECRET
            assert e.value.attempts_left == left
        with pytest.raises(WardError.PinRequired) as e:
            await ward_ffi.unlock_with_platform_secret(config, wrong)
        assert e.value.reason == ward_ffi.PinRequiredReason.TOO_MANY_FAILURES
        # ... and the right secret is refused too.
        with pytest.raises(WardError.PinRequired) as e:
            await ward_ffi.unlock_with_platform_secret(config, secret)
        assert e.value.reason == ward_ffi.PinRequiredReason.NO_SLOT

        # Slot failures are not PIN attempts: a wrong PIN now is the first.
        with pytest.raises(WardError.WrongPin) as wrong_pin:
            await ward_ffi.unlock(config, "not-the-pin-000")
        assert wrong_pin.value.attempts_left == 9
        # The PIN still works, and enables the slot again.
        c = await ward_ffi.unlock(config, PIN)
        assert c.device_id() == device
        await c.enable_platform_unlock(secret, 1)
        await c.lock()
        # An expired slot is refused (and removed).
        await asyncio.sleep(2.1)
        with pytest.raises(WardError.PinRequired) as e:
            await ward_ffi.unlock_with_platform_secret(config, secret)
        assert e.value.reason == ward_ffi.PinRequiredReason.EXPIRED
        with pytest.raises(WardError.PinRequired) as e:
            await ward_ffi.unlock_with_platform_secret(config, secret)
        assert e.value.reason == ward_ffi.PinRequiredReason.NO_SLOT

        # Disabled: only the PIN.
        c = await ward_ffi.unlock(config, PIN)
        await c.enable_platform_unlock(secret, 3600)
        await c.disable_platform_unlock()
        await c.lock()
        with pytest.raises(WardError.PinRequired) as e:
            await ward_ffi.unlock_with_platform_secret(config, secret)
        assert e.value.reason == ward_ffi.PinRequiredReason.NO_SLOT
        c = await ward_ffi.unlock(config, PIN)
        await c.lock()

    asyncio.run(scenario())


def test_room_create_add_remove_send_list(servers, tmp):
    async def scenario():
        alice, bob = await enroll_pair(servers, tmp, "dr.room", "nurse.room")
        carol = await ward_ffi.enroll_with_invite_file(
            servers.config(tmp / "carol.db"), str(servers.invite("dr.carol", "Carol")), PIN)
        room_id = await alice.create_room(
            "Bed 12", "CASE-2026-0042", "hyperkalaemia", ["nurse.room"],
            ward_ffi.RoomHistory.FROM_JOIN)
        [room] = await alice.rooms()
        assert room.id == room_id and room.name == "Bed 12"
        assert room.case_reference == "CASE-2026-0042" and room.is_member
        assert sorted((m.user_id, m.admin) for m in room.members) == [
            ("dr.room", True), ("nurse.room", False)]

        sent = await alice.send_room_text(room_id, "K+ rechecked: 5.2")
        m = (await next_matching(bob, is_message)).message
        assert m.text == "K+ rechecked: 5.2" and m.resource_id == sent
        assert m.conversation_id == room.conversation_id
        [bob_room] = await bob.rooms()
        assert bob_room.name == "Bed 12" and bob_room.id == room_id

        await alice.add_room_members(room_id, ["dr.carol"])
        assert sorted(m.user_id for m in await alice.room_members(room_id)) == [
            "dr.carol", "dr.room", "nurse.room"]
        await alice.remove_room_member(room_id, "nurse.room")
        assert sorted(m.user_id for m in await alice.room_members(room_id)) == [
            "dr.carol", "dr.room"]
        after = await alice.send_room_text(room_id, "handover to Dr Carol")
        m = (await next_matching(carol, lambda ev: is_message(ev) and ev.message.resource_id == after)).message
        assert m.text == "handover to Dr Carol"
        # Bob, removed, sees it in the room log he verifies, and can no
        # longer send to the room.
        [bob_room] = await bob.rooms()
        assert bob_room.id == room_id and not bob_room.is_member
        assert "nurse.room" not in [m.user_id for m in bob_room.members]
        with pytest.raises(WardError.Forbidden):
            await bob.send_room_text(room_id, "still here?")
        for c in (alice, bob, carol):
            await c.lock()

    asyncio.run(scenario())


class Recorder(ward_ffi.ProgressListener):
    """Collects progress callbacks (called on an SDK thread)."""

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()

    def on_progress(self, progress):
        with self.lock:
            self.seen.append((progress.phase, progress.done, progress.total))

    def phase(self, phase):
        with self.lock:
            return [(d, t) for p, d, t in self.seen if p == phase]


def check_phase(rec, phase, size):
    steps = rec.phase(phase)
    assert steps, f"no {phase} progress: {rec.seen}"
    dones = [d for d, _ in steps]
    assert dones == sorted(dones), "progress never goes back"
    assert all(t == steps[0][1] for _, t in steps) and steps[-1][0] == steps[-1][1]
    assert steps[-1][1] >= size


def test_attachment_with_progress_and_identical_download(servers, tmp):
    async def scenario():
        alice, bob = await enroll_pair(servers, tmp, "dr.files", "nurse.files")
        data = os.urandom(3 * 64 * 1024 + 12345)  # several 64 KiB chunks and a partial one
        src = tmp / "ecg.pdf"
        src.write_bytes(data)
        conversation = await alice.conversation_with(["nurse.files"])
        up = Recorder()
        sent = await alice.send_file(conversation, str(src), "ecg.pdf", "application/pdf", up)
        check_phase(up, ward_ffi.TransferPhase.ENCRYPTING, len(data))
        check_phase(up, ward_ffi.TransferPhase.UPLOADING, len(data))

        m = (await next_matching(bob, is_message)).message
        assert m.resource_id == sent and m.kind == ward_ffi.MessageKind.ATTACHMENT
        assert m.attachment.file_name == "ecg.pdf"
        assert m.attachment.media_type == "application/pdf"
        assert m.attachment.size == len(data)
        down = Recorder()
        out = tmp / "received.pdf"
        written = await bob.download(m, str(out), down)
        assert written == str(out)
        assert out.read_bytes() == data
        check_phase(down, ward_ffi.TransferPhase.DOWNLOADING, len(data))
        # Never overwritten: a typed refusal.
        with pytest.raises(WardError.Invalid):
            await bob.download(m, str(out), None)
        for c in (alice, bob):
            await c.lock()

    asyncio.run(scenario())


def test_directory_search_pages_and_a_thumbnail(servers, tmp):
    async def scenario():
        alice = await ward_ffi.enroll_with_invite_file(
            servers.config(tmp / "dr.dir.db"),
            str(servers.invite("dr.dir", "Claire Martin", "physician", "10001234567")), PIN)
        for i, (uid, name) in enumerate(
                [("nurse.dir1", "Luc Martin"), ("nurse.dir2", "Ana Martinez"),
                 ("nurse.dir3", "Ada Martin")]):
            await (await ward_ffi.enroll_with_invite_file(
                servers.config(tmp / f"{uid}.db"),
                str(servers.invite(uid, name, "nurse", f"2000000000{i}")), PIN)).lock()
        # Name-word prefixes ("martin" is one of "Martinez" too), a
        # profession filter (not the physician), pages of two.
        first = await alice.search_directory("martin", "nurse", 2, None)
        assert len(first.entries) == 2 and first.next_cursor is not None
        second = await alice.search_directory("martin", "nurse", 2, first.next_cursor)
        assert len(second.entries) == 1 and second.next_cursor is None
        found = {e.user_id for e in first.entries + second.entries}
        assert found == {"nurse.dir1", "nurse.dir2", "nurse.dir3"}, found
        assert all(e.profession == "nurse" for e in first.entries + second.entries)
        # Prefixes only: the middle of a name matches nothing.
        assert (await alice.search_directory("artin", None, 10, None)).entries == []
        # This user's devices: one, this one.
        devices = await alice.devices()
        assert len(devices) == 1 and devices[0].this_device and devices[0].active
        with pytest.raises(WardError.Invalid):
            await alice.revoke_device("not hex")
        # A registry-number prefix.
        by_number = await alice.search_directory("1000123", None, 10, None)
        assert [e.user_id for e in by_number.entries] == ["dr.dir"]
        assert by_number.entries[0].registry_number == "10001234567"

        # A file with its preview, to a colleague found in the directory.
        bob = await ward_ffi.unlock(servers.config(tmp / "nurse.dir1.db"), PIN)
        src = tmp / "wound.jpg"
        src.write_bytes(os.urandom(70_000))
        preview = os.urandom(5_000)
        conversation = await alice.conversation_with(["nurse.dir1"])
        with pytest.raises(WardError.Invalid):
            await alice.send_file_with_thumbnail(
                conversation, str(src), "wound.jpg", "image/jpeg",
                ward_ffi.Thumbnail(media_type="text/plain", bytes=preview), None)
        await alice.send_file_with_thumbnail(
            conversation, str(src), "wound.jpg", "image/jpeg",
            ward_ffi.Thumbnail(media_type="image/png", bytes=preview), None)
        m = (await next_matching(bob, is_message)).message
        assert m.attachment.thumbnail.bytes == preview
        assert m.attachment.thumbnail.media_type == "image/png"
        for c in (alice, bob):
            await c.lock()

    asyncio.run(scenario())
