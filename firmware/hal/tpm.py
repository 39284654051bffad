"""A TPM 2.0 behind a small interface: seal and unseal short secrets, and its dictionary-attack lockout.

Through ``tpm2-pytss`` (the TSS's own Python binding, over Debian's ``libtss2``; the ESAPI is the
layer the TSS recommends for applications, and it talks to ``/dev/tpmrm0`` or to the ``swtpm``
simulator by the same TCTI string). Nothing here opens the TPM at import.

Every object is sealed under a primary storage key that the TPM re-creates from its owner
hierarchy's seed (same template, same key), so the blobs kept on disk are useless on any other
TPM. Two kinds of sealed object:

- ``da=False`` (the device secret): no authorisation, ``noDA``: unsealing it costs nothing and
  counts nothing;
- ``da=True`` (a PIN slot's factor): its authorisation value is derived from the PIN, and the TPM
  counts every wrong one in its dictionary-attack counter. After ``max_tries`` failures it refuses
  every DA-protected object until ``recovery_s`` has passed per failure, or until the lockout
  hierarchy's authorisation resets it. Root on the box cannot reset that counter without it.
"""

from __future__ import annotations

import base64
import json
import os

from ..errors import DeviceError

_RC_AUTH_FAIL = 0x098E      # TPM_RC_AUTH_FAIL for session 1 (the DA counter was incremented)
_RC_BAD_AUTH = 0x09A2       # TPM_RC_BAD_AUTH (session 1): wrong value on a noDA object
_RC_LOCKOUT = 0x0921        # TPM_RC_LOCKOUT: in DA lockout


class TpmAuthFailed(DeviceError):
    """The authorisation value was wrong; the TPM counted it (``tries_left`` before its lockout)."""

    def __init__(self, msg: str, tries_left: int) -> None:
        super().__init__(msg)
        self.tries_left = tries_left


class TpmLockedOut(DeviceError):
    """The TPM refuses DA-protected objects for now; ``retry_after`` seconds until one more try."""

    def __init__(self, msg: str, retry_after: float) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


def _esapi_env() -> None:
    os.environ.setdefault("TSS2_LOG", "all+NONE")  # the ESAPI logs every TPM error to stderr otherwise


class Tpm:
    """One TPM, reached through a TCTI string (``device:/dev/tpmrm0``, ``swtpm:host=…,port=…``)."""

    def __init__(self, tcti: str) -> None:
        self.tcti = tcti

    # -- sessions ------------------------------------------------------------------------------
    def _open(self):
        _esapi_env()
        try:
            from tpm2_pytss import ESAPI
        except ImportError as exc:  # the binding is a dependency; its C library may be missing
            raise DeviceError(f"the TPM library is not available: {exc}") from None
        try:
            return ESAPI(self.tcti)
        except Exception as exc:  # noqa: BLE001 - TSS2_Exception and OSError: no TPM there
            raise DeviceError(f"no TPM at {self.tcti}: {exc}") from None

    @staticmethod
    def _primary(e):
        from tpm2_pytss import ESYS_TR, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPMA_OBJECT, TPMT_PUBLIC

        attrs = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
                 | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.NODA)
        tmpl = TPMT_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attrs)
        handle, _, _, _, _ = e.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC(tmpl), ESYS_TR.OWNER)
        return handle

    @staticmethod
    def _close(e, *handles) -> None:
        """Flush what was loaded (a TPM without a resource manager, such as swtpm, keeps it) and close."""
        for h in handles:
            if h is not None:
                try:
                    e.flush_context(h)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        e.close()

    # -- sealing -------------------------------------------------------------------------------
    def seal(self, data: bytes, *, auth: bytes = b"", da: bool) -> bytes:
        """A blob (JSON: the object's public and private parts) that only this TPM unseals."""
        from tpm2_pytss import (TPM2_ALG, TPM2B_AUTH, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPM2B_SENSITIVE_DATA,
                                TPMA_OBJECT, TPMS_SENSITIVE_CREATE, TPMT_PUBLIC)

        e = self._open()
        parent = None
        try:
            parent = self._primary(e)
            attrs = TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.FIXEDTPM
            if not da:
                attrs |= TPMA_OBJECT.NODA
            t = TPMT_PUBLIC(type=TPM2_ALG.KEYEDHASH, objectAttributes=attrs, nameAlg=TPM2_ALG.SHA256)
            t.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
            sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(auth),
                                                                data=TPM2B_SENSITIVE_DATA(data)))
            priv, pub, _, _, _ = e.create(parent, sens, TPM2B_PUBLIC(t))
            return json.dumps({"format": "nokbox-tpm-sealed/1", "da": da,
                               "public": base64.b64encode(pub.marshal()).decode(),
                               "private": base64.b64encode(priv.marshal()).decode()}).encode()
        except DeviceError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DeviceError(f"sealing in the TPM failed: {exc}") from None
        finally:
            self._close(e, parent)

    def unseal(self, blob: bytes, *, auth: bytes = b"") -> bytes:
        """The sealed data; TpmAuthFailed (counted) or TpmLockedOut for a DA-protected object."""
        from tpm2_pytss import TPM2B_PRIVATE, TPM2B_PUBLIC
        from tpm2_pytss.TSS2_Exception import TSS2_Exception

        try:
            obj = json.loads(blob)
            pub, _ = TPM2B_PUBLIC.unmarshal(base64.b64decode(obj["public"]))
            priv, _ = TPM2B_PRIVATE.unmarshal(base64.b64decode(obj["private"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DeviceError(f"the TPM blob is damaged: {exc}") from None
        e = self._open()
        parent = handle = None
        try:
            parent = self._primary(e)
            try:
                handle = e.load(parent, priv, pub)
            except TSS2_Exception as exc:
                raise DeviceError("this blob was sealed by another TPM (or the TPM was cleared)"
                                  f" and does not load: {exc}") from None
            e.tr_set_auth(handle, auth)
            try:
                return bytes(e.unseal(handle))
            except TSS2_Exception as exc:
                rc = exc.rc & 0xFFFF
                if rc == _RC_AUTH_FAIL:
                    da = self._da(e)
                    raise TpmAuthFailed("the TPM refused the authorisation and counted it "
                                        f"({da['max_tries'] - da['counter']} tries left before its lockout)",
                                        da["max_tries"] - da["counter"]) from None
                if rc == _RC_LOCKOUT:
                    da = self._da(e)
                    raise TpmLockedOut(f"the TPM is in its dictionary-attack lockout; one more try in about "
                                       f"{da['recovery_s']:.0f} s", float(da["recovery_s"])) from None
                if rc == _RC_BAD_AUTH:
                    raise DeviceError("the TPM refused the authorisation of a sealed object") from None
                raise DeviceError(f"unsealing in the TPM failed: {exc}") from None
        finally:
            self._close(e, handle, parent)

    # -- dictionary-attack protection --------------------------------------------------------
    @staticmethod
    def _da(e) -> dict:
        from tpm2_pytss import TPM2_CAP, TPM2_PT

        _, data = e.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.LOCKOUT_COUNTER, 4)
        p = {int(x.property): int(x.value) for x in data.data.tpmProperties}
        _, perm = e.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.PERMANENT, 1)
        flags = int(perm.data.tpmProperties[0].value) if perm.data.tpmProperties else 0
        return {"counter": p.get(int(TPM2_PT.LOCKOUT_COUNTER), 0), "max_tries": p.get(int(TPM2_PT.MAX_AUTH_FAIL), 0),
                "recovery_s": p.get(int(TPM2_PT.LOCKOUT_INTERVAL), 0),
                "lockout_recovery_s": p.get(int(TPM2_PT.LOCKOUT_RECOVERY), 0),
                "in_lockout": bool(flags & (1 << 9)),  # TPMA_PERMANENT.inLockout
                "lockout_auth_set": bool(flags & (1 << 2))}  # TPMA_PERMANENT.lockoutAuthSet

    def da_status(self) -> dict:
        """The TPM's counter, limit and timings, and whether it is locked out now."""
        e = self._open()
        try:
            return self._da(e)
        finally:
            e.close()

    def take_lockout(self, new_auth: bytes, *, max_tries: int, recovery_s: int, lockout_recovery_s: int,
                     old_auth: bytes = b"") -> None:
        """Set the DA policy, then the lockout hierarchy's authorisation (a fresh TPM's is empty)."""
        from tpm2_pytss import ESYS_TR, TPM2B_AUTH
        from tpm2_pytss.TSS2_Exception import TSS2_Exception

        e = self._open()
        try:
            e.tr_set_auth(ESYS_TR.LOCKOUT, old_auth)
            e.dictionary_attack_parameters(max_tries, recovery_s, lockout_recovery_s, ESYS_TR.LOCKOUT)
            e.hierarchy_change_auth(ESYS_TR.LOCKOUT, TPM2B_AUTH(new_auth))
        except TSS2_Exception as exc:
            raise DeviceError("the TPM's lockout hierarchy is owned by something else "
                              f"(clear the TPM or give its lockout authorisation): {exc}") from None
        finally:
            e.close()

    def reset_lockout(self, auth: bytes) -> None:
        """Zero the DA counter and leave the lockout (needs the lockout authorisation)."""
        from tpm2_pytss import ESYS_TR
        from tpm2_pytss.TSS2_Exception import TSS2_Exception

        e = self._open()
        try:
            e.tr_set_auth(ESYS_TR.LOCKOUT, auth)
            e.dictionary_attack_lock_reset(ESYS_TR.LOCKOUT)
        except TSS2_Exception as exc:
            raise DeviceError(f"the TPM refused the lockout reset: {exc}") from None
        finally:
            e.close()
