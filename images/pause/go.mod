module paddock.io/images/pause

go 1.26
