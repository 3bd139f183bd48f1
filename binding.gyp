{
  "targets": [
    {
      "target_name": "slimta_diskstorage",
      "sources": [
        "native/dir_sync.cc",
        "native/fs_chain.cc",
        "native/fs_batch.cc",
        "native/fs_gate.cc",
        "native/binding.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"
      ],
      "cflags": ["-fvisibility=hidden"],
      "cflags_cc": ["-fvisibility=hidden", "-fno-exceptions"],
      "xcode_settings": {
        "GCC_SYMBOLS_PRIVATE_EXTERN": "YES",
        "GCC_ENABLE_CPP_EXCEPTIONS": "NO"
      },
      "msvs_settings": {
        "VCCLCompilerTool": { "ExceptionHandling": 0 }
      },
      "configurations": {
        "Release": {
          "cflags": ["-O2"],
          "cflags_cc": ["-O2"],
          "xcode_settings": { "GCC_OPTIMIZATION_LEVEL": "2" }
        }
      }
    }
  ]
}
