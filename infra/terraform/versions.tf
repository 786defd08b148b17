# One lbtrain deployment on Google Cloud. Checked offline by tests/unit/test_terraform.py
# (parsed with python-hcl2 and compared with the code), so keep expressions simple enough to read.
terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project
}
