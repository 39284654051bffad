"""GPIO through gpiozero: the pin factory is chosen by config and created on first use.

Backends: ``lgpio`` (Raspberry Pi 5 and 4 on current Raspberry Pi OS), ``mock``
(gpiozero's own MockFactory: the simulated box and the tests), ``auto`` (lgpio when a GPIO
chip is present, else mock, which the status page then shows as simulated).
"""

from __future__ import annotations

import logging
import os

from ..errors import ConfigError, DeviceError

log = logging.getLogger(__name__)


def gpio_backend(name: str) -> str:
    """Resolve 'auto' to the backend this machine can use."""
    if name != "auto":
        return name
    if not os.path.exists("/dev/gpiochip0"):
        return "mock"  # no GPIO here: the simulated box (the status page says so)
    if not _has_lgpio():
        # a board with GPIO and no way to drive it: never fall back to simulated pins there, or the
        # relays would not move while every notice is recorded as played
        raise DeviceError("GPIO chip /dev/gpiochip0 is present but the lgpio module is not installed "
                          "(pip install lgpio; the package's arm64 build has it); set notice.gpio = \"mock\" "
                          "only on a box with no notice wiring")
    return "lgpio"


def _has_lgpio() -> bool:
    try:
        import lgpio  # noqa: F401
    except ImportError:
        return False
    return True


def make_pin_factory(name: str):
    """A gpiozero pin factory. For 'mock', an existing global MockFactory is reused (tests set it)."""
    from gpiozero import Device

    backend = gpio_backend(name)
    if backend == "mock":
        from gpiozero.pins.mock import MockFactory

        if isinstance(Device.pin_factory, MockFactory):
            return Device.pin_factory
        return MockFactory()
    if backend == "lgpio":
        try:
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        except Exception as exc:  # noqa: BLE001 - the message names what is missing
            raise DeviceError(f"GPIO (lgpio) is not available: {exc}") from None
    raise ConfigError(f"notice.gpio: unknown backend {name!r}")


def _device(cls, factory, pin: int, key: str, **kw):
    """Make a gpiozero device; its pin errors become errors that name the config key."""
    from gpiozero.exc import GPIOPinInUse, PinInvalidPin

    try:
        return cls(pin, pin_factory=factory, **kw)
    except PinInvalidPin:
        raise ConfigError(f"{key}: GPIO {pin} does not exist on this board") from None
    except GPIOPinInUse:
        raise ConfigError(f"{key}: GPIO {pin} is already in use") from None


def output_device(factory, pin: int, key: str):
    """A DigitalOutputDevice, initially off."""
    from gpiozero import DigitalOutputDevice

    return _device(DigitalOutputDevice, factory, pin, key, initial_value=False)


def input_device(factory, pin: int, key: str):
    """A DigitalInputDevice (pulled up; active low, as loop-current detectors and relay contacts are)."""
    from gpiozero import DigitalInputDevice

    return _device(DigitalInputDevice, factory, pin, key, pull_up=True)
