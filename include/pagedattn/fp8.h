#pragma once
// placeholder: owned by the reference/fp8 helper
