"""RAPID: pinfold speaks the VM Manager (VMM) protocol of the RAPID platform.

RAPID's peers (DS, SLAM, AS) talk to a VMM over TCP in the Java Object
Serialization stream format (`/work/shared/rapid/PROTOCOL.md` section 3). This
package re-implements that side in Python. The rule: everything here except the
server module is sans-I/O; `codec` turns values into bytes and bytes back into
values and never touches a socket or a clock.
"""

from pinfold.rapid.codec import (
    MAX_BLOCK_LENGTH,
    MAX_LIST_SIZE,
    MAX_STRING_BYTES,
    STREAM_HEADER,
    CodecError,
    Reader,
    TruncatedError,
    Writer,
)

__all__ = [
    "MAX_BLOCK_LENGTH",
    "MAX_LIST_SIZE",
    "MAX_STRING_BYTES",
    "STREAM_HEADER",
    "CodecError",
    "Reader",
    "TruncatedError",
    "Writer",
]
