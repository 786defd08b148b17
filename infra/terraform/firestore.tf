# Pipeline state (docs/architecture.md §6) in the project's (default) database, native mode.
resource "google_firestore_database" "default" {
  count                   = var.create_firestore_database ? 1 : 0
  project                 = var.project
  name                    = "(default)"
  location_id             = var.firestore_location
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = "DELETE_PROTECTION_ENABLED"
  deletion_policy         = "ABANDON"
  depends_on              = [google_project_service.apis]
}

locals {
  # Composite indexes of runs listings (FirestoreStore.list_runs: REST API, CLI, dashboard): each
  # combination of equality filters, newest first. Single-field filters use automatic indexes.
  runs_list_indexes = {
    "status"                         = ["status"]
    "model_type"                     = ["model_type"]
    "model_run_id"                   = ["model_run_id"]
    "status-model_type"              = ["status", "model_type"]
    "status-model_run_id"            = ["status", "model_run_id"]
    "model_type-model_run_id"        = ["model_type", "model_run_id"]
    "status-model_type-model_run_id" = ["status", "model_type", "model_run_id"]
  }
}

resource "google_firestore_index" "runs_list" {
  for_each   = local.runs_list_indexes
  project    = var.project
  database   = "(default)"
  collection = "runs"

  dynamic "fields" {
    for_each = each.value
    content {
      field_path = fields.value
      order      = "ASCENDING"
    }
  }
  fields {
    field_path = "created_at"
    order      = "DESCENDING"
  }
  fields {
    field_path = "__name__"
    order      = "DESCENDING"
  }
  depends_on = [google_firestore_database.default]
}

# Webhook dedupe markers expire on their own (deliveries/{key}.expire_at).
resource "google_firestore_field" "deliveries_ttl" {
  project    = var.project
  database   = "(default)"
  collection = "deliveries"
  field      = "expire_at"
  ttl_config {}
  index_config {} # never queried: no single-field indexes on a monotonically growing timestamp
  depends_on = [google_firestore_database.default]
}

# Large run fields nobody filters on: no single-field indexes (cheaper writes, no 40k-entry limit).
# Mirrors infra/firestore.indexes.json's fieldOverrides.
resource "google_firestore_field" "runs_unindexed" {
  for_each   = toset(["labelbox_statuses", "params", "metrics"])
  project    = var.project
  database   = "(default)"
  collection = "runs"
  field      = each.value
  index_config {}
  depends_on = [google_firestore_database.default]
}
