# FASTMLP_SANITIZE: sanitizer instrumentation for the CPU build (filled in by the hardening work).
