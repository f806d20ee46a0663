// Umbrella header.
#pragma once

#include "pagedattn/attention.h"
#include "pagedattn/block_manager.h"
#include "pagedattn/cache_ops.h"
#include "pagedattn/fp8.h"
#include "pagedattn/types.h"
#include "pagedattn/version.h"
