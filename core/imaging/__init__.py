"""Reading camera images: metadata, quality metrics and thumbnails, decoded out of harm's way.

Why a package of its own: every image on a card is untrusted input to C decoders (libjpeg,
libpng, libtiff, libheif). Following Pillow's security handbook, ``decode`` accepts only an
allow-list of formats and treats decompression bombs as errors, and ``pool`` runs it in worker
processes with memory, CPU and time limits, so a file that crashes, hangs or exhausts a decoder
is reported as unreadable and the session carries on.
"""
