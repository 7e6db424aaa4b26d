{
  "targets": [
    {
      "target_name": "shallot_dtls",
      "sources": ["src/native/dtls_core.c", "src/native/dtls_addon.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"],
      "defines": ["NAPI_VERSION=8", "OPENSSL_API_COMPAT=30000"]
    },
    {
      "target_name": "shallot_tun",
      "sources": ["src/native/tun_addon.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "shallot_udp",
      "sources": ["src/native/udp_addon.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
