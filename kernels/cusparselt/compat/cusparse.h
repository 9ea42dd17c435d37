/* Minimal stand-in for the CUDA toolkit's cusparse.h, written for sparse24-jax.
 *
 * cuSPARSELt 0.8's cusparseLt.h does `#include "cusparse.h"` for three enums
 * (cusparseStatus_t, cusparseOperation_t, cusparseOrder_t). A CUDA toolkit
 * without the cuSPARSE component has no cusparse.h; the build
 * (sparse24_jax_kernels.cusparselt.build) then puts this directory on the
 * include path. The values are those of the public cuSPARSE API. It is never
 * used when a real cusparse.h is found.
 */
#ifndef CUSPARSE_H_
#define CUSPARSE_H_

#include <cuda_runtime_api.h>
#include <library_types.h>

#if defined(__cplusplus)
extern "C" {
#endif

typedef enum {
  CUSPARSE_STATUS_SUCCESS = 0,
  CUSPARSE_STATUS_NOT_INITIALIZED = 1,
  CUSPARSE_STATUS_ALLOC_FAILED = 2,
  CUSPARSE_STATUS_INVALID_VALUE = 3,
  CUSPARSE_STATUS_ARCH_MISMATCH = 4,
  CUSPARSE_STATUS_MAPPING_ERROR = 5,
  CUSPARSE_STATUS_EXECUTION_FAILED = 6,
  CUSPARSE_STATUS_INTERNAL_ERROR = 7,
  CUSPARSE_STATUS_MATRIX_TYPE_NOT_SUPPORTED = 8,
  CUSPARSE_STATUS_ZERO_PIVOT = 9,
  CUSPARSE_STATUS_NOT_SUPPORTED = 10,
  CUSPARSE_STATUS_INSUFFICIENT_RESOURCES = 11
} cusparseStatus_t;

typedef enum {
  CUSPARSE_OPERATION_NON_TRANSPOSE = 0,
  CUSPARSE_OPERATION_TRANSPOSE = 1,
  CUSPARSE_OPERATION_CONJUGATE_TRANSPOSE = 2
} cusparseOperation_t;

typedef enum {
  CUSPARSE_ORDER_COL = 1,
  CUSPARSE_ORDER_ROW = 2
} cusparseOrder_t;

#if defined(__cplusplus)
}
#endif

#endif /* CUSPARSE_H_ */
