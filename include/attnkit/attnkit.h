// attnkit: attention at scale. Include this one header for the whole public API.
#pragma once

#include "attnkit/attention.h"
#include "attnkit/cost.h"
#include "attnkit/error.h"
#include "attnkit/host_buffer.h"
#include "attnkit/kv_cache.h"
#include "attnkit/linear.h"
#include "attnkit/mask.h"
#include "attnkit/model.h"
#include "attnkit/recurrent.h"
#include "attnkit/tensor.h"
