// The DLPack v0.8 ABI (dmlc/dlpack, include/dlpack/dlpack.h), only what to_dlpack needs. Written
// out here rather than vendored: the layout is a stable C ABI, and these few structs are the
// whole contract with consumers (torch.from_dlpack, cupy.from_dlpack, jax.dlpack).
#pragma once
#include <cstdint>

extern "C" {

#define DLPACK_VERSION 80
#define DLPACK_ABI_VERSION 1

typedef enum : int32_t {  // a C enum: int-sized
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,
  kDLOpenCL = 4,
  kDLVulkan = 7,
  kDLMetal = 8,
  kDLVPI = 9,
  kDLROCM = 10,
  kDLROCMHost = 11,
  kDLExtDev = 12,
  kDLCUDAManaged = 13,
  kDLOneAPI = 14,
  kDLWebGPU = 15,
  kDLHexagon = 16,
} DLDeviceType;

typedef struct {
  DLDeviceType device_type;
  int32_t device_id;
} DLDevice;

typedef enum : uint8_t {
  kDLInt = 0U,
  kDLUInt = 1U,
  kDLFloat = 2U,
  kDLOpaqueHandle = 3U,
  kDLBfloat = 4U,
  kDLComplex = 5U,
  kDLBool = 6U,
} DLDataTypeCode;

typedef struct {
  uint8_t code;  // a DLDataTypeCode
  uint8_t bits;
  uint16_t lanes;
} DLDataType;

typedef struct {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // NULL: compact row-major
  uint64_t byte_offset;
} DLTensor;

typedef struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensor* self);
} DLManagedTensor;

}  // extern "C"

static_assert(sizeof(DLDevice) == 8, "DLDevice is two int32");
static_assert(sizeof(DLDataType) == 4, "DLDataType is 4 bytes");
static_assert(sizeof(DLTensor) == 48, "DLTensor layout (64-bit)");
